"""Retrieval-augmented generation: documents in, grounded and cited answers out.

A collection (`collection.py`) is one directory holding a SQLite store of documents and chunks, the
distributed dense index over chunk embeddings and a BM25 index. `ingest.py` fills it; `pipeline.py`
answers questions over it; `evaluation.py` measures retrieval. `rag` imports `search`, never `gateway`:
generation and the optional rerankers come in as small interfaces.
"""
