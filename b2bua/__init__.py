# The SIP stack's hot modules may run compiled (b2bua/native.py): decide before any is imported.
from . import native

native.install()
