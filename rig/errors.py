"""Errors a user can cause: bad input, incomparable runs. The CLI prints the message on one line and exits 2."""


class UserError(Exception):
    """A problem with the user's input, not a bug: the CLI shows the message on one line and exits with code 2."""
