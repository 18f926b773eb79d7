"""RAG on the Slurm documentation (Debian slurm-wlm-doc): ingest throughput, re-ingest, retrieval quality.

One process, one run; every ratio comes from figures measured side by side in it:
  ingest     the embedder alone over the pages' chunk texts (no cache), a whole `ingest` into a fresh
             collection with an empty embedding cache, and the embedder alone again; ingest chunks/s
             against the mean of the two embedder passes (the embedder must dominate the ingest)
  re-ingest  the same tree again (nothing changed: nothing may be embedded)
  retrieval  `hpcrag rag eval` on the FAQ set built from the same docs (`hpcrag rag eval-set`): BM25,
             dense, the configured hybrid and the whole pipeline, interleaved per question, with
             paired bootstrap intervals, and each method's retrieval latency (no generation)
Writes the Markdown report to --out (and prints it).

Usage: .venv/bin/python scripts/bench_rag.py [--pages N] [--repeats 3] [--out benchmarks/rag-slurm-docs.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path("/usr/share/doc/slurm-wlm/html")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=0, help="ingest only the first N pages (0: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per question and method")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/rag-slurm-docs.md"))
    args = parser.parse_args()
    if not DOCS.is_dir():
        sys.exit(f"{DOCS} is missing: install Debian's slurm-wlm-doc (scripts/setup does)")
    work = Path(tempfile.mkdtemp(prefix="bench-rag-"))
    os.environ["HPCRAG_RAG_DIR"] = str(work / "collections")
    try:
        lines = _run(work, args.pages, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    return 0


def _run(work: Path, pages: int, repeats: int) -> list[str]:
    from hpcrag.config import load_config
    from hpcrag.rag.chunk import chunk_document
    from hpcrag.rag.collection import Collection, collections_root
    from hpcrag.rag.evalset import build_slurm_faq_set
    from hpcrag.rag.evaluate_collection import evaluate
    from hpcrag.rag.evaluation import format_report
    from hpcrag.rag.extract import extract
    from hpcrag.rag.factory import make_embedder
    from hpcrag.rag.ingest import chunk_sizes, ingest

    config = load_config()
    summary = build_slurm_faq_set(DOCS, work / "corpus", work / "qa.jsonl")
    corpus = work / "corpus"
    if pages:
        keep = {"faq.html", *sorted(p.name for p in corpus.glob("*.html"))[: max(pages - 1, 0)]}
        for page in corpus.glob("*.html"):
            if page.name not in keep:
                page.unlink()
    settings = config.rag.for_collection("bench")
    embedder = make_embedder(settings.embedder)
    size, overlap = chunk_sizes(settings, embedder, lambda message: None)
    texts = [
        c.embed_text
        for page in sorted(corpus.glob("*.html"))
        for c in chunk_document(extract(page), embedder.tokenizer(), size, overlap)
    ]
    embedder.embed(texts[:64])  # warm-up: the first batch pays for lazy initialisation

    def embed_alone() -> float:
        start = time.perf_counter()
        for first in range(0, len(texts), settings.embedder.batch_size):
            embedder.embed(texts[first : first + settings.embedder.batch_size])
        return len(texts) / (time.perf_counter() - start)

    alone_before = embed_alone()
    collection = Collection(collections_root(config.rag.collections_dir), "bench")
    first = ingest(collection, [corpus], settings, embedder)
    alone_after = embed_alone()
    second = ingest(collection, [corpus], settings, embedder)
    whole = first.chunks_embedded / first.seconds["total"]
    alone = (alone_before + alone_after) / 2
    report = evaluate(collection, settings, work / "qa.jsonl", repeats=repeats)
    documents = len(list(corpus.glob("*.html")))
    return [
        "# RAG on the Slurm documentation",
        "",
        f"Command: `.venv/bin/python scripts/bench_rag.py{f' --pages {pages}' if pages else ''} "
        f"--repeats {repeats}`; {platform.node()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}.",
        f"Corpus: {documents} pages of Debian's slurm-wlm-doc ({DOCS}), FAQ questions removed from faq.html "
        f"({summary.items_written} QA items). Embedder {embedder.name}, chunks of {size} word pieces "
        f"with {overlap} overlap.",
        "",
        "## Ingest (one run: embedder alone, whole ingest, embedder alone)",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| chunks | {first.chunks:,} ({first.chunks_embedded:,} distinct texts embedded) |",
        f"| embedder alone, before / after | {alone_before:.1f} / {alone_after:.1f} chunks/s |",
        f"| whole ingest | {whole:.1f} chunks/s ({first.seconds['total']:.1f} s) |",
        f"| whole ingest / embedder alone | {whole / alone:.2f} |",
        "| ingest stages (s) | " + ", ".join(f"{k} {v:.2f}" for k, v in first.seconds.items()) + " |",
        f"| second ingest, unchanged tree | {second.seconds['total']:.2f} s, "
        f"{second.chunks_embedded} chunks embedded |",
        "",
        f"## Retrieval on the FAQ set (interleaved, {repeats} timed calls per question and method)",
        "",
        "```",
        format_report(report),
        "```",
        "",
        "bm25/dense: one side alone; hybrid: the configured fusion (rag.yaml retrieval.fusion, alpha "
        f"{settings.retrieval.hybrid_alpha}); pipeline: hybrid then MMR "
        f"(lambda {settings.retrieval.mmr_lambda}, "
        f"at most {settings.retrieval.max_chunks_per_document} chunks per document), what a question gets. "
        "Latency is retrieval only (question embedding included, no generation).",
    ]


if __name__ == "__main__":
    sys.exit(main())
