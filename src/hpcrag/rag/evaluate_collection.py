"""`hpcrag rag eval`: one collection's retrieval measured with BM25, dense, the hybrid and the pipeline.

Methods, run interleaved per question in one process (`evaluation.run_eval`):
  bm25, dense   one side alone;
  hybrid        the configured fusion of both sides (the reference the others are compared with);
  pipeline      what a question really gets: the hybrid, the reranker when configured, then MMR.
A chunk is relevant when the QA item says so (`evalset.QaItem.is_relevant`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcrag.config.rag_schema import CollectionSettings
from hpcrag.rag.collection import Collection
from hpcrag.rag.evalset import QaItem, load_qa
from hpcrag.rag.evaluation import DEPTH, EvalReport, run_eval


def evaluate(
    collection: Collection,
    settings: CollectionSettings,
    qa_file: Path,
    limit: int | None = None,
    repeats: int = 1,
) -> EvalReport:
    from hpcrag.rag.factory import open_pipeline

    items = load_qa(qa_file)[:limit]
    pipeline = open_pipeline(collection, settings)
    try:
        store = pipeline.loaded.store
        chunks: dict[int, Any] = {}
        sources: dict[str, str] = {}

        def is_relevant(item: QaItem, row: int) -> bool:
            if row not in chunks:
                chunk = store.chunks([row])[0]
                if chunk.doc_id not in sources:
                    sources[chunk.doc_id] = store.documents_by_id([chunk.doc_id])[chunk.doc_id].source
                chunks[row] = (sources[chunk.doc_id], chunk.text, chunk.anchor)
            return item.is_relevant(*chunks[row])

        def side(mode: str) -> Any:
            def run(item: QaItem) -> list[int]:
                question, _ = pipeline.check_question(item.question)
                found = pipeline.retriever.retrieve(question, fusion=mode).candidates
                return [c.row for c in found[:DEPTH]]

            return run

        def whole(item: QaItem) -> list[int]:
            candidates, _ = pipeline.retrieve(item.question, k=DEPTH)
            return [c.row for c in candidates]

        methods = {
            "bm25": side("bm25"),
            "dense": side("dense"),
            "hybrid": side(settings.retrieval.fusion),
            "pipeline": whole,
        }
        return run_eval(items, methods, is_relevant, repeats=repeats, reference="hybrid")
    finally:
        pipeline.loaded.close()
