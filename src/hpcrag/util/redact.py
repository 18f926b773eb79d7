"""Credentials never reach a log: every record's message, arguments and exception text are redacted.

What counts as a credential: the value of an `Authorization` (or `Proxy-Authorization`) header, a
`Bearer` token, the value after `api_key`, `api-key`, `x-api-key`, `access_token`, `token`, `secret` or
`password` (with `=` or `:`, or as a flag: `--api-key VALUE`), and anything shaped like an hpcrag API
key (`hpc-` and key characters) wherever it stands. Each value becomes `[REDACTED]`; the label stays,
so the line still says what was there.

`install()` makes this hold for every log record of the process, whatever logger made it (aiohttp's
HTTP parser errors quote raw header bytes) and whatever handler writes it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[REDACTED]"

_FLAGS = re.IGNORECASE
# Each pattern names the credential `v`. A header value runs to the end of its line or its quote; other
# values end at whitespace, a quote, a query-string or list separator, or a backslash (the start of an
# escape such as \r\n in the repr of raw header bytes).
_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?P<v>[^\r\n\"'\\]*)", _FLAGS),
    re.compile(r"bearer\s+(?P<v>[A-Za-z0-9\-._~+/]+=*)", _FLAGS),
    re.compile(
        r"(?:api[-_]?key|access[-_]?token|token|secret|password)[\"']?\s*[:=]\s*[\"']?"
        r"(?P<v>[^\s\"'&,;\\]+)",
        _FLAGS,
    ),
    re.compile(r"--?(?:api[-_]?key|token|secret|password)(?:=|\s+)(?P<v>\S+)", _FLAGS),
    # An hpcrag key needs no label; 16 characters also catch the start of a key cut short.
    re.compile(r"(?P<v>hpc-[A-Za-z0-9_-]{16,})"),
)


def redact(text: str) -> str:
    """`text` with every credential replaced by [REDACTED]."""
    spans: list[tuple[int, int]] = []
    for pattern in _PATTERNS:
        # Matches may overlap ("api_key=--api-key SECRET", "Bearer Bearer SECRET"): look for the next
        # one just after the start of the last, not after its end, and redact the union of all values.
        match = pattern.search(text)
        while match is not None:
            if match.end("v") > match.start("v"):
                spans.append(match.span("v"))
            match = pattern.search(text, match.start() + 1)
    if not spans:
        return text
    parts: list[str] = []
    done = 0
    for start, end in sorted(spans):
        if end <= done:
            continue
        if start >= done:
            parts.append(text[done:start])
            parts.append(REDACTED)
        done = end
    parts.append(text[done:])
    return "".join(parts)


def redact_record(record: logging.LogRecord) -> None:
    """Rewrite `record` in place so that no handler or formatter can write a credential from it."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not let its arguments through unredacted
        message = f"{record.msg!s} {record.args!r}"
    record.msg = redact(message)
    record.args = None
    if record.exc_info:
        # Handlers render exc_info themselves, and an exception's text may hold raw request bytes:
        # keep only the redacted text, which every Formatter prints in its place.
        record.exc_text = _FORMATTER.formatException(record.exc_info)
        record.exc_info = None
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactFilter(logging.Filter):
    """Redacts each record it sees (for a handler of one's own); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_FORMATTER = logging.Formatter()
_FILTER = RedactFilter()


def install() -> None:
    """Redact every log record this process makes from now on, and whatever the root handlers write.

    Records are redacted when they are made: a filter on a logger does not see its children's records,
    and a handler added later has no filter. The filter on the root handlers also covers records built
    another way (`logging.makeLogRecord`). Calling it again changes nothing.
    """
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "redacts", False):

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = factory(*args, **kwargs)
            redact_record(record)
            return record

        redacting_factory.redacts = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(redacting_factory)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
