"""The chat prompt of a RAG answer: rules, numbered fenced sources and the question, within a token budget.

`build_prompt` promises that the whole prompt (every message, counted with `count_tokens`, plus a few
tokens per message for the chat template) plus `max_answer_tokens` fits in `budget_tokens`. Sources go
in the order given, numbered [1]..[n] as they will be cited, each in its own fence with one nonce per
prompt; the first source that does not fit is cut at a sentence boundary when at least a third of it
fits, else left out, and every source after it is left out too, so the numbers stay 1..m.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from hpcrag.errors import QuestionError

MESSAGE_OVERHEAD_TOKENS = 8  # role markers and separators a chat template adds around each message
MIN_TRUNCATED_SHARE = 1 / 3  # a cut source must keep at least this share of its tokens
TRUNCATION_MARK = " …"

DEFAULT_INSTRUCTIONS = """\
You answer questions using only the numbered sources in the user's message.
- Use only what the sources say; do not add facts from elsewhere.
- Cite every claim with the number of the source that supports it, in square brackets: [1], or [1][3] \
for several.
- If the sources do not contain the answer, say that you don't know; do not guess.
- Keep commands, options, paths and numbers exactly as the sources write them."""

# A cut point: after a sentence's end mark or at a line break.
_CUT = re.compile(r"[.!?](?=\s)|\n")


@dataclass(frozen=True)
class PromptSource:
    number: int  # 1-based, as the answer cites it
    title: str
    heading_path: tuple[str, ...]
    anchor: str | None  # where in the document (or the URL) a reader finds it
    text: str


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]  # OpenAI chat messages: system, then user
    sources_used: list[PromptSource]  # as placed in the prompt (the last one possibly cut)
    tokens: int  # the prompt's estimated tokens, answer excluded
    dropped: int  # sources left out for lack of room


def estimate_tokens(text: str) -> int:
    """A deliberately high token count: UTF-8 bytes / 3.

    The generator's tokenizer is unknown here (the gateway routes to any tier's model), so the budget
    uses an estimate that errs high: BPE tokenizers give about 4 characters per token on English prose
    and 3 on code, and a non-Latin character (2-4 bytes) costs about one token.
    """
    return math.ceil(len(text.encode("utf-8")) / 3)


def build_prompt(
    question: str,
    sources: Sequence[PromptSource],
    budget_tokens: int,
    count_tokens: Callable[[str], int] | None = None,
    max_answer_tokens: int = 512,
    template: str | None = None,
) -> Prompt:
    """The chat messages for `question` over as many of `sources` as the budget holds.

    `template` replaces DEFAULT_INSTRUCTIONS (the answering rules); the rule that fenced source text is
    untrusted data is always appended.
    """
    from hpcrag.rag import injection

    if [source.number for source in sources] != list(range(1, len(sources) + 1)):
        raise ValueError("sources must be numbered 1..n in order")
    count = count_tokens or estimate_tokens
    nonce = injection.new_nonce()
    system = f"{template or DEFAULT_INSTRUCTIONS}\n\n{injection.fence_instructions(nonce)}"
    room = budget_tokens - max_answer_tokens

    def assemble(blocks: list[str]) -> tuple[list[dict[str, str]], int]:
        user = "\n\n".join(["Sources:", *blocks, f"Question: {question}"] if blocks else [question])
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return messages, sum(count(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in messages)

    def block(source: PromptSource, text: str) -> str:
        label = " \u203a ".join([source.title, *source.heading_path])
        return injection.fence(source.number, text, label, nonce)

    messages, tokens = assemble([])
    if tokens > room:
        raise QuestionError(
            f"the question and instructions take {tokens} tokens but the budget leaves {room} "
            f"({budget_tokens} minus {max_answer_tokens} for the answer); shorten the question or raise "
            "the tier's context_tokens"
        )
    blocks: list[str] = []
    used: list[PromptSource] = []
    overflow = None  # the first source that does not fit whole
    for source in sources:
        whole = block(source, source.text)
        fits = assemble([*blocks, whole])
        if fits[1] > room:
            overflow = source
            break
        blocks.append(whole)
        used.append(source)
        messages, tokens = fits
    if overflow is not None:
        cut = _longest_fitting_cut(
            overflow.text, lambda text: assemble([*blocks, block(overflow, text)])[1] <= room
        )
        if cut is not None and count(cut) >= MIN_TRUNCATED_SHARE * count(overflow.text):
            blocks.append(block(overflow, cut))
            used.append(replace(overflow, text=cut))
            messages, tokens = assemble(blocks)
    return Prompt(messages, used, tokens, len(sources) - len(used))


def _longest_fitting_cut(text: str, fits: Callable[[str], bool]) -> str | None:
    """The longest sentence-bounded start of `text` (marked as cut) that `fits`."""
    lead = len(text) - len(text.lstrip())
    cuts = [text[: m.end()].rstrip() + TRUNCATION_MARK for m in _CUT.finditer(text) if m.end() > lead]
    low, high = 0, len(cuts)  # cuts[:low] are known to fit, cuts[high:] not
    while low < high:
        middle = (low + high) // 2
        if fits(cuts[middle]):
            low = middle + 1
        else:
            high = middle
    return cuts[low - 1] if low else None
