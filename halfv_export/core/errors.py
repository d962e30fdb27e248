"""User-facing errors: the CLI prints their message as one line and exits with code 2."""


class UserError(Exception):
    """A problem with what the user gave us (name, path, file, shape), not a bug in halfv-export."""
