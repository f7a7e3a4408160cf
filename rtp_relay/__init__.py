"""RTP relay controlled over a subset of rtpengine's ng protocol (see session.py for the model)."""
