"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """A problem with the user's input (files, config, data), not a bug in the engine."""


class WriteError(OSError):
    """A file could not be written (full disk, I/O error, refused by the file system); nothing was replaced.

    Not the user's input at fault, so the CLI exits 1 rather than 2, still with one line. An OSError, so
    callers that already handle failed writes (e.g. a fallback to another folder) keep doing so.
    """
