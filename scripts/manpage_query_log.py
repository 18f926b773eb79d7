#!/usr/bin/env python3
"""A query log for the man-page benchmark: held-out queries of the same kind as the benchmark's.

The benchmark's 1,000 queries are the NAME lines of 1,000 of the manual pages the base chunks come
from, embedded with all-MiniLM-L6-v2 (`../shared/datasets/manpages-minilm/README.md`). This draws
other pages of that corpus (never one of the 1,000), renders their NAME section the same way
(`man -l`, then `col -bx`, whitespace collapsed) and embeds it with the same model, so that
`hpcrag index build --query-sample` learns where queries fall without seeing the benchmark's own.

    .venv/bin/python scripts/manpage_query_log.py OUT.npy [--count 2000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "manpages-minilm"
SEED = 20261130
MAN = Path("/usr/share/man")


def held_out_pages(dataset: Path = DATASET) -> list[str]:
    """The corpus's pages that no benchmark query describes, in a fixed random order."""
    pages = sorted(set(json.loads((dataset / "sources.json").read_text())))
    asked = {page for page, _ in json.loads((dataset / "queries.json").read_text())}
    held = [page for page in pages if page not in asked]
    return [held[i] for i in np.random.default_rng(SEED).permutation(len(held))]


def name_line(page: str) -> str | None:
    """A page's NAME section as `man -l | col -bx` renders it (None if not installed or has none).
    Only the source up to the second section is rendered: the NAME section reads the same."""
    name, section = page.removesuffix(".txt").rsplit(".", 1)
    path = MAN / f"man{section}" / f"{name}.{section}.gz"
    if not path.is_file():
        return None
    with gzip.open(path, "rt", errors="replace") as file:
        source = file.read()
    heads = [match.start() for match in re.finditer(r"^\.SH", source, re.M)]
    if len(heads) < 2:
        return None
    try:
        lines = [line.strip() for line in render(source[: heads[1]]).splitlines()]
    except subprocess.CalledProcessError:  # a page man cannot render is left out of the log
        return None
    if "NAME" not in lines:
        return None
    body = []
    for line in lines[lines.index("NAME") + 1 :]:
        if not line and body:
            break
        if line:
            body.append(line)
    return " ".join(" ".join(body).split()) or None


def render(roff: str) -> str:
    """Manual page source as plain text, as the dataset rendered it (`man -l`, then `col -bx`)."""
    shown = subprocess.run(["man", "-l", "-"], input=roff, capture_output=True, text=True, check=True).stdout
    return subprocess.run(["col", "-bx"], input=shown, capture_output=True, text=True, check=True).stdout


def query_log(count: int, dataset: Path = DATASET) -> tuple[list[str], np.ndarray]:
    """`count` held-out descriptions and their L2-normalised float32 embeddings."""
    from hpcrag.rag.embed import LocalEmbedder

    texts: list[str] = []
    pages = held_out_pages(dataset)
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(pages), count):
            texts += [text for text in pool.map(name_line, pages[start : start + count]) if text]
            if len(texts) >= count:
                break
    texts = texts[:count]
    vectors = LocalEmbedder().embed(texts).astype(np.float32)
    return texts, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    texts, vectors = query_log(args.count)
    np.save(args.out, vectors)
    print(f"saved {len(texts)} held-out man-page descriptions to {args.out}, e.g. {texts[0]!r}")


if __name__ == "__main__":
    main()
