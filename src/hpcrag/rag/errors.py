"""The RAG errors a caller causes, apart from the ones the pipeline's parts meet.

A `QuestionError` is the question's fault (empty, too long, an unknown filter key or tier, no room in
the budget): a service answers it 400. Any other HpcragError from the pipeline (an embedding server
down, a damaged collection) is the service's, and is answered as such.
"""

from __future__ import annotations

from hpcrag.errors import HpcragError


class QuestionError(HpcragError):
    """The question, its filters or its tier cannot be answered as asked; the message says how to fix it."""
