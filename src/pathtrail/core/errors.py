"""Errors meant for people: a message that says what is wrong, where, and how to fix it."""


class PathTrailError(Exception):
    """A user-facing failure (bad input, bad params, failed gate). Reported without a traceback."""
