"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """A problem with the user's input (files, config, data), not a bug in the engine."""
