"""RAG ingest as Slurm work: `sbatch slurm/rag-ingest.sbatch` with 2 MPI ranks (`srun --mpi=pmix`) splits
the documents, embeds each rank's share, builds the dense index over both ranks, and a second run of
the unchanged tree embeds nothing."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from hpcrag.config import load_config
from hpcrag.rag.collection import Collection
from hpcrag.rag.factory import open_pipeline
from hpcrag.slurm.batch import JobFailedError, submit, wait
from hpcrag.slurm.target import SlurmTarget

REPO = Path(__file__).resolve().parents[2]
DOCS = Path("/usr/share/doc/slurm-wlm/html")
PAGES = ("quickstart.html", "job_array.html", "scancel.html")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    if not DOCS.is_dir():
        pytest.skip("Debian's slurm-wlm-doc is not installed (scripts/setup installs it)")
    folder = tmp_path / "slurm docs"
    folder.mkdir()
    for page in PAGES:
        shutil.copy(DOCS / page, folder / page)
    return folder


def test_sbatch_ingest_over_two_ranks(nyc: SlurmTarget, corpus: Path, tmp_path: Path) -> None:
    rag_dir = tmp_path / "collections"
    export = f"--export=ALL,HPCRAG_PYTHON={sys.executable},HPCRAG_RAG_DIR={rag_dir}"
    args = ["--partition=tier-s", "--ntasks=2", export]
    template = REPO / "slurm/rag-ingest.sbatch"
    log = tmp_path / "ingest.log"
    with pytest.raises(JobFailedError, match=r"ended FAILED .*log: "):
        wait(nyc, submit(nyc, template, args, log), log, timeout=120)
    assert "set COLLECTION and DOCS with --export" in log.read_text()

    wait(nyc, submit(nyc, template, args, log, ["docs", str(corpus), "--json"]), log, timeout=600)
    text = log.read_text()
    assert "2 ranks on" in text
    report = json.loads(text[text.index("{") :])
    assert report["documents"] == 3 and len(report["added"]) == 3
    assert report["chunks_embedded"] == report["chunks"] > 10
    collection = Collection(rag_dir, "docs")
    dense = json.loads((collection.current_path() / "dense" / "manifest.json").read_text())
    assert dense["build"]["ranks"] == 2 and dense["nshards"] >= 2

    settings = load_config().rag.for_collection("docs")
    pipeline = open_pipeline(collection, settings)
    try:
        found, _ = pipeline.retrieve("cancel one task of a job array", k=3)
        store = pipeline.loaded.store
        doc_ids = {chunk.doc_id for chunk in store.chunks([c.row for c in found])}
        names = {Path(d.source).name for d in store.documents_by_id(doc_ids).values()}
    finally:
        pipeline.loaded.close()
    assert names & {"job_array.html", "scancel.html"}

    again = tmp_path / "again.log"
    wait(nyc, submit(nyc, template, args, again, ["docs", str(corpus), "--json"]), again, timeout=600)
    text = again.read_text()
    report = json.loads(text[text.index("{") :])
    assert report["chunks_embedded"] == 0 and report["unchanged"] == 3
    assert report["generation"] == collection.manifest().generation == 1
