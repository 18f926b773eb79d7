"""The exception hierarchy: every error a user can cause or meet says what is wrong and how to fix it."""


class HpcragError(Exception):
    """Base of every error hpcrag raises on purpose; the CLI prints these without a traceback."""
