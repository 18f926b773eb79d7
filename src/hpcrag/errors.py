"""The exception hierarchy: every error a user can cause or meet says what is wrong and how to fix it."""


class HpcragError(Exception):
    """Base of every error hpcrag raises on purpose; the CLI prints these without a traceback."""


class QuestionError(HpcragError):
    """A question that cannot be answered as asked (empty, too long, an unknown filter key or tier, no
    room in the context budget): the asker's to fix, so a service answers it 400."""
