"""RTP relay controlled over a subset of rtpengine's ng protocol (see session.py for the model)."""

# rtp_relay.sdp may run compiled with the SIP stack (b2bua/native.py): decide before it is imported.
from b2bua import native

native.install()
