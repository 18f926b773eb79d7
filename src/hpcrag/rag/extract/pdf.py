"""The PDF reader: one section per page, anchored `page=N`; the title from the document's metadata.

Encrypted, damaged and text-less (scanned) files raise `ExtractError`. pypdf is imported only when a PDF
is read.
"""

from __future__ import annotations

from pathlib import Path

from hpcrag.rag.extract.common import ExtractError, _clean, _squash, _stem
from hpcrag.rag.types import Section


def _pdf(path: Path, data: bytes) -> tuple[str, list[Section]]:
    import io
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # pypdf warns about every small flaw it repairs
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractError(f"{path} is an encrypted PDF; give a copy without a password")
        title = _squash(_clean(str((reader.metadata or {}).get("/Title") or "")))
        sections = []
        for number, page in enumerate(reader.pages, start=1):
            text = _squash(_clean(page.extract_text() or ""))
            sections.append(Section((f"Page {number}",), f"page={number}", text))
    except ExtractError:
        raise
    except Exception as exc:  # a damaged file can make pypdf fail in many ways, not only with PyPdfError
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ExtractError(f"{path} is not a readable PDF ({reason}); re-export or repair it") from None
    if not any(s.text for s in sections):
        raise ExtractError(f"{path} has no text layer (a scan?); run OCR on it first")
    return title or _stem(path), sections
