"""Errors that the command line reports as one line, without a traceback."""


class Mem3DError(Exception):
    """A user-facing error: the message names the file or value and the fix."""


class CancelledError(Mem3DError):
    """The caller cancelled a propagation; nothing was written."""
