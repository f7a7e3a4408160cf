# The parsing core may run compiled (b2bua/native.py): its build directory goes first on this
# package's search path when it matches the sources.
from .. import native

native.activate(__path__)
