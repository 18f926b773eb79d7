"""`hpcrag plan search`: the capacity arithmetic on a hand-computed case, the seed's 100 x T4 scenario,
the calibration file's checks, the CLI in text and JSON, and every bad input as one clear error."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcrag.catalog import search_plan as sp
from hpcrag.cli.main import cli
from hpcrag.config import load_config
from hpcrag.config.schema import GpuType
from hpcrag.errors import HpcragError
from tests.conftest import CONFIG_DIR

ENV = {"HPCRAG_CONFIG_DIR": str(CONFIG_DIR), "HPCRAG_PROFILE": "dev"}
TERA_GPU = GpuType(
    display_name="Tera",
    vram_gb=24,
    bandwidth_tbs=1.0,
    fp8=False,
    fp4=False,
    price_range_usd_per_hour=(1.0, 1.0),
    best_for=["s"],
    fp16_tflops=100,
)
CALIBRATION = {
    "dataset": "toy",
    "vectors": 400_000,
    "dim": 128,
    "k": 10,
    "command": "scripts/bench_search.py --toy",
    "fanout": [
        {"nshards": 4, "nlist": 1024, "max_shards": 2, "recall": 0.96, "mean_shards_touched": 2.0},
        {"nshards": 8, "nlist": 1024, "max_shards": 3, "recall": 0.96, "mean_shards_touched": 2.4},
        {"nshards": 10, "recall": 0.90, "mean_shards_touched": 1.0},  # below the target: never picked
    ],
    "local": {
        "ivf-flat": {"recall": 0.96, "scanned_share": 0.015, "shard_vectors": 100_000},
        "hnsw": {
            "recall": 0.97,
            "ef_search": 32,
            "cpu_seconds_per_query_per_shard": 1e-4,
            "shard_vectors": 100_000,
        },
        "ivf-pq": {"recall": 0.96, "pq_m": 16, "refine": 10, "scanned_share": 0.015},
    },
}


def write_calibration(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def calibration(tmp_path: Path) -> sp.Calibration:
    return sp.load_calibration(write_calibration(tmp_path, CALIBRATION))


@pytest.fixture
def t4() -> GpuType:
    return load_config(CONFIG_DIR, "dev").gpu("t4")


@pytest.fixture
def no_default_calibration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI's default calibration file, absent whatever benchmarks/ holds."""
    monkeypatch.setattr(sp, "DEFAULT_CALIBRATION", tmp_path / "absent.json")


def values(figures: dict[str, sp.Figure]) -> dict[str, object]:
    return {name: f.value for name, f in figures.items()}


def test_hand_computed_plan(calibration: sp.Calibration) -> None:
    # 1,000,000 x 128 float16 on 10 GPUs of 24 GB and 1 TB/s, 1 replica: 10 shards of 100,000 vectors.
    plan = sp.plan_search(
        1_000_000, 128, 10, "tera", TERA_GPU, 0.95, qps_target=5000, calibration=calibration
    )
    shared = values(plan.shared)
    assert shared["shards"] == 10
    assert shared["vectors_per_shard"] == 100_000
    # Fan-out: of the points at recall >= 0.95, 8 shards is closest to 10: f = 2.4 / 8 = 0.3, 3 touched.
    assert shared["fanout_fraction"] == pytest.approx(0.3)
    assert shared["shards_touched"] == pytest.approx(3.0)
    assert "2.4 of 8 shards at recall 0.96" in plan.shared["fanout_fraction"].source
    # Network: 3 shards x (128 x 4 B query + 10 x (8 + 4) B results) = 3 x 632 = 1,896 B.
    assert shared["network_bytes_per_query"] == pytest.approx(1896)

    flat = values(plan.kind("ivf-flat").figures)
    assert flat["bytes_per_vector"] == 264  # 128 x 2 + 8
    assert flat["index_bytes_per_gpu"] == 26_400_000  # 264 x 100,000
    # Routing centroids: the default --nlist 1,000 (the seed's) x 128 x 4 B = 512,000 B on every rank.
    assert shared["routing_centroids_per_gpu"] == 512_000
    assert flat["vram_per_gpu"] == pytest.approx(3.0264e9 + 512_000)  # + 2 GB runtime + 1 GB buffers
    assert flat["fits"] is True  # <= 0.9 x 24 GB
    # Probed lists hold 0.015 of the collection, spread over 3 of 10 shards: 0.05 of each touched one,
    # 0.05 x 100,000 x 264 = 1,320,000 B; 1e12 x 0.6 / 1.32e6 QPS.
    assert flat["bytes_read_per_query_per_shard"] == pytest.approx(1_320_000)
    assert flat["qps_per_gpu"] == pytest.approx(454_545.4545)
    assert flat["shard_mean_ms"] == pytest.approx(1000 / 454_545.4545)
    # GPUs: 10 x 454,545 / 3 = 1,515,152; NIC: 3.125e9 / 1,896 = 1,648,207; coordinator 10,000 binds.
    assert flat["gpu_bound_qps"] == pytest.approx(1_515_151.515)
    assert flat["nic_bound_qps"] == pytest.approx(1_648_206.751)
    assert flat["capacity_qps"] == 10_000
    assert flat["system_qps"] == pytest.approx(7000)  # 70% utilisation
    assert flat["network_bytes_per_s"] == pytest.approx(7000 * 1896)
    assert flat["p99_ms"] == pytest.approx(19 + 1.7 * 1000 / 454_545.4545)
    assert "coordinator-bound" in plan.kind("ivf-flat").figures["capacity_qps"].source

    hnsw = values(plan.kind("hnsw").figures)
    assert plan.kind("hnsw").device == "cpu"
    assert "vram_per_gpu" not in hnsw
    assert hnsw["host_bytes_per_gpu"] == 100_000 * (128 * 2 + 8 + 32 * 2 * 4) + 512_000  # float16 rows
    # Measured at the same shard size and dim: 1e-4 core-seconds; 8 cores per GPU -> 80,000 QPS.
    assert hnsw["cpu_seconds_per_query_per_shard"] == pytest.approx(1e-4)
    assert hnsw["qps_per_gpu"] == pytest.approx(80_000)
    assert hnsw["p99_ms"] == pytest.approx(19 + 1.7 * 0.1)

    cagra = values(plan.kind("cagra").figures)
    assert cagra["bytes_per_vector"] == 128 * 4 + 8 + 64 * 4  # float32 rows
    # Seed: 1,000 QPS per T4 (0.32 TB/s) at 1M x 768: x (1 / 0.32) x (768 ln 1e6) / (128 ln 1e5) = 22,500.
    assert cagra["qps_per_gpu"] == pytest.approx(22_500)
    assert cagra["shard_mean_ms"] == pytest.approx(12 * 1000 / 22_500)
    assert cagra["gpu_bound_qps"] == pytest.approx(75_000)

    pq = values(plan.kind("ivf-pq").figures)
    assert pq["bytes_per_vector"] == 24  # pq_m = 128 / 8 = 16 code bytes + 8 B id
    assert pq["host_bytes_per_gpu"] == 100_000 * 256  # full float16 vectors for refine
    # 0.05 x 100,000 x 24 B codes + k 10 x refine 10 x 256 B = 120,000 + 25,600.
    assert pq["bytes_read_per_query_per_shard"] == pytest.approx(145_600)
    assert pq["qps_per_gpu"] == pytest.approx(6e11 / 145_600)

    assert plan.kind("ivf-flat").verdicts["qps"] == "5,000 QPS: meets"
    # One 1M-vector shard already sustains 0.7 x 45,455 QPS, so the fewest is a single GPU.
    assert plan.kind("ivf-flat").verdicts["gpus_needed"] == (
        "10 GPUs as 10 shards x 1 replica; fewest: 1 GPU as 1 shard x 1 replica "
        "(fan-out at each shard count from the nearest measured one)"
    )


def test_replicas_shrink_the_shard_count_and_pick_the_nearest_fanout(calibration: sp.Calibration) -> None:
    plan = sp.plan_search(1_000_000, 128, 10, "tera", TERA_GPU, 0.95, replicas=2, calibration=calibration)
    shared = values(plan.shared)
    # 5 shards of 200,000; the 4-shard point is nearest: f = 2 / 4, touching 2.5 of 5.
    assert (shared["shards"], shared["vectors_per_shard"]) == (5, 200_000)
    assert shared["shards_touched"] == pytest.approx(2.5)
    flat = values(plan.kind("ivf-flat").figures)
    # The probed 0.015 of the collection over 2.5 of 5 shards: 0.03 of each touched shard.
    assert flat["qps_per_gpu"] == pytest.approx(6e11 / (0.03 * 200_000 * 264))
    # All 10 GPUs serve: 10 x per-GPU QPS / 2.5 touched.
    assert flat["gpu_bound_qps"] == pytest.approx(10 * 6e11 / (0.03 * 200_000 * 264) / 2.5)


def test_boundary_replication_stores_more_and_takes_the_fanout_measured_with_it(tmp_path: Path) -> None:
    copies = {"nshards": 8, "replicate": 0.5, "recall": 0.96, "mean_shards_touched": 1.6}
    measured = sp.load_calibration(
        write_calibration(tmp_path, {**CALIBRATION, "fanout": [*CALIBRATION["fanout"], copies]})
    )
    plan = sp.plan_search(1_000_000, 128, 10, "tera", TERA_GPU, 0.95, calibration=measured, replicate=0.5)
    shared = values(plan.shared)
    # 1,000,000 x 1.5 / 10 shards = 150,000 rows each; f = 1.6 / 8 = 0.2 of 10 shards = 2 touched.
    assert shared["vectors_per_shard"] == 150_000
    assert shared["fanout_fraction"] == pytest.approx(0.2)
    assert shared["shards_touched"] == pytest.approx(2.0)
    assert "1.6 of 8 shards, 50% replicated at recall 0.96" in plan.shared["fanout_fraction"].source
    assert plan.shared["vectors_per_shard"].source == "--vectors x (1 + --replicate) / shards, rounded up"
    flat = values(plan.kind("ivf-flat").figures)
    assert flat["index_bytes_per_gpu"] == 264 * 150_000
    # 0.015 of the collection over 2 of 10 shards: 0.075 of each touched shard's rows.
    assert flat["gpu_bound_qps"] == pytest.approx(10 * 6e11 / (0.075 * 150_000 * 264) / 2.0)
    assert plan.inputs["replicate"] == 0.5
    # Without --replicate the copies' point is not used: 2.4 of 8 as in the plain plan.
    plain = sp.plan_search(1_000_000, 128, 10, "tera", TERA_GPU, 0.95, calibration=measured)
    assert values(plain.shared)["fanout_fraction"] == pytest.approx(0.3)


def test_a_share_the_calibration_did_not_measure_is_refused(calibration: sp.Calibration) -> None:
    with pytest.raises(HpcragError, match=r"no fan-out measured with --replicate 0.3; it measured 0: choose"):
        sp.plan_search(1_000_000, 128, 10, "tera", TERA_GPU, 0.95, calibration=calibration, replicate=0.3)
    with pytest.raises(HpcragError, match=r"--replicate 0.3 needs a calibration file that measured it"):
        sp.plan_search(1_000_000, 128, 10, "tera", TERA_GPU, 0.95, replicate=0.3)
    with pytest.raises(HpcragError, match=r"gives 1 shard: plan at least 2 shards, or drop --replicate"):
        sp.plan_search(
            1_000_000, 128, 2, "tera", TERA_GPU, 0.95, replicas=2, calibration=calibration, replicate=0.3
        )


def test_a_calibration_without_plain_fanout_is_refused_for_a_plain_plan(tmp_path: Path) -> None:
    only_copies = [{"nshards": 8, "replicate": 0.3, "recall": 0.96, "mean_shards_touched": 2.0}]
    measured = sp.load_calibration(write_calibration(tmp_path, {**CALIBRATION, "fanout": only_copies}))
    with pytest.raises(HpcragError, match=r"no fan-out measured with --replicate 0; it measured 0.3: choose"):
        sp.plan_search(1_000_000, 128, 10, "tera", TERA_GPU, 0.95, calibration=measured)


def test_seed_scenario_on_100_t4(t4: GpuType) -> None:
    plan = sp.plan_search(100_000_000, 768, 100, "t4", t4, 0.95, qps_target=7000, p99_target_ms=40)
    flat = plan.kind("ivf-flat")
    assert flat.figures["index_bytes_per_gpu"].value == 100e6 / 100 * (768 * 2 + 8)
    assert flat.figures["vram_per_gpu"].value == pytest.approx(1.544e9 + 1000 * 768 * 4 + 3e9)
    bigger = sp.plan_search(100_000_000, 768, 100, "t4", t4, 0.95, nlist=65_536)
    assert bigger.kind("ivf-flat").figures["vram_per_gpu"].value == pytest.approx(
        1.544e9 + 65_536 * 768 * 4 + 3e9
    )
    assert flat.figures["fits"].value is True
    # Without calibration: f = 0.5 -> 50 of 100 shards; the probed lists hold 1/16 of the collection,
    # 1/16 x 100 / 50 = 1/8 of each touched 1.544 GB shard per query, at 0.6 x 320 GB/s.
    assert plan.shared["shards_touched"].value == pytest.approx(50)
    assert plan.shared["fanout_fraction"].source.startswith("assumed")
    assert flat.figures["scanned_fraction"].value == pytest.approx(1 / 8)
    per_gpu = 0.32e12 * 0.6 / (1.544e9 / 8)
    assert flat.figures["qps_per_gpu"].value == pytest.approx(per_gpu)
    assert flat.figures["system_qps"].value == pytest.approx(0.7 * 100 * per_gpu / 50)  # 1,393
    assert flat.verdicts["qps"] == "7,000 QPS: short by 80%"
    assert flat.verdicts["gpus_needed"].startswith("600 GPUs as 100 shards x 6 replicas")
    assert flat.verdicts["p99"] == "p99 40 ms: meets"
    assert plan.kind("ivf-pq").figures["bytes_per_vector"].value == 96 + 8
    assert plan.kind("cagra").figures["qps_per_gpu"].value == pytest.approx(1000)
    for kind in plan.kinds:
        for figure in kind.figures.values():
            assert figure.source, f"{kind.kind} has a figure without a source"


def test_cli_text_and_json(tmp_path: Path, no_default_calibration: None) -> None:
    args = ["plan", "search", "--vectors", "100M", "--dim", "768", "--gpus", "100", "--gpu", "t4"]
    args += ["--recall", "0.95", "--qps", "7000"]
    text = CliRunner().invoke(cli, args, env={**ENV, "COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    assert "100,000,000 x 768 float16 on 100 x T4" in text.output
    assert "calibration: none (defaults marked assumed)" in text.output
    for kind in ("ivf-flat (GPU)", "hnsw (CPU)", "cagra (GPU)", "ivf-pq (GPU)"):
        assert kind in text.output
    assert "7,000 QPS: short by 80%" in text.output
    assert "4.55 GB" in text.output  # ivf-flat VRAM per GPU (with 3.07 MB of routing centroids)

    path = write_calibration(tmp_path, CALIBRATION)
    result = CliRunner().invoke(cli, [*args, "--calibration", str(path), "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["inputs"]["vectors"] == 100_000_000
    assert data["calibration"] == str(path)
    touched = data["shared"]["shards_touched"]
    assert touched["value"] == pytest.approx(30)  # 2.4 / 8 of 100 shards
    assert touched["source"].startswith("fraction x 100 shards")
    flat = next(k for k in data["kinds"] if k["kind"] == "ivf-flat")
    assert flat["figures"]["scanned_fraction"] == {
        "value": 0.05,
        "unit": "",
        "source": f"calibration {path} (toy, ivf-flat nprobe/nlist 0.015 at recall 0.96, 128 dims); "
        "over the touched shards: 0.015 x 100 shards / 30",
    }
    assert all(f["source"] for k in data["kinds"] for f in k["figures"].values())


def test_cli_reads_the_default_calibration_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sp, "DEFAULT_CALIBRATION", write_calibration(tmp_path, CALIBRATION))
    args = ["plan", "search", "--vectors", "1M", "--dim", "128", "--gpus", "10", "--gpu", "t4"]
    result = CliRunner().invoke(cli, [*args, "--recall", "0.95", "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["shared"]["fanout_fraction"]["value"] == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("100M", 100_000_000),
        ("1.5B", 1_500_000_000),
        ("250k", 250_000),
        ("84114", 84_114),
        ("1e8", 10**8),
        ("1,500,000", 1_500_000),
    ],
)
def test_parse_count(text: str, count: int) -> None:
    assert sp.parse_count(text) == count


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--gpu", "v100", "unknown GPU type 'v100'; valid GPU types: .*t4"),
        ("--vectors", "lots", "cannot read 'lots' as a number of vectors; write e.g. 100M"),
        ("--vectors", "0.5", "must be a whole number >= 1"),
        ("--vectors", "1e400", "cannot read '1e400' as a number of vectors"),
        ("--vectors", "1e99", r"number of vectors '1e99' is beyond any plan \(more than 1e\+15\)"),
        ("--vectors", "1,5M", "cannot read '1,5M' as a number of vectors"),
        ("--vectors", "\uff11\uff10\uff10M", "cannot read"),
        ("--dim", "0", "--dim must be > 0, got 0"),
        ("--gpus", "0", "--gpus must be >= 1, got 0"),
        ("--recall", "0", r"--recall must be in \(0, 1\], got 0.0"),
        ("--recall", "1.5", r"--recall must be in \(0, 1\], got 1.5"),
        ("--replicas", "3", "--replicas 3 does not divide --gpus 10.*choose a divisor"),
        ("--dtype", "int3", "unknown --dtype 'int3'; valid: float16, float32"),
        ("--replicate", "1.5", "--replicate 1.5 is not a share of the vectors: give a number from 0 to 1"),
        ("--nlist", "0", r"--nlist must be >= 1, got 0; give the index's coarse centroids \(as built\)"),
    ],
)
def test_bad_input_is_one_clear_error_before_any_work(option: str, value: str, message: str) -> None:
    base = {"--vectors": "1M", "--dim": "128", "--gpus": "10", "--gpu": "t4", "--recall": "0.95"}
    base[option] = value
    # A calibration file that does not exist: the input error must come first.
    args = [
        "plan",
        "search",
        *[x for pair in base.items() for x in pair],
        "--calibration",
        "/nonexistent.json",
    ]
    result = CliRunner().invoke(cli, args, env=ENV)
    assert result.exit_code == 1
    assert result.output.startswith("error: ")
    assert re.search(message, result.output), result.output


@pytest.mark.parametrize(
    ("dim", "pq_m", "reason"),
    [
        (
            100,
            None,
            "ivf-pq not applicable: dim 100 is not divisible by 8 (the default pq_m = dim / 8); "
            "give a --pq-m that divides 100",
        ),
        (
            128,
            48,
            "ivf-pq not applicable: dim 128 is not divisible by pq_m 48; give a --pq-m that divides 128",
        ),
    ],
)
def test_ivf_pq_that_does_not_divide_the_dimension_is_reported_not_raised(
    dim: int, pq_m: int | None, reason: str
) -> None:
    plan = sp.plan_search(1_000_000, dim, 10, "tera", TERA_GPU, 0.95, pq_m=pq_m)
    pq = plan.kind("ivf-pq")
    assert (pq.applicable, pq.reason) == (False, reason)
    assert plan.kind("ivf-flat").applicable


def test_memory_that_does_not_fit_says_so(t4: GpuType) -> None:
    # 1B x 768 on 10 T4s: 154 GB of vectors per GPU.
    plan = sp.plan_search(1_000_000_000, 768, 10, "t4", t4, 0.95, qps_target=100)
    flat = plan.kind("ivf-flat")
    assert flat.figures["fits"].value is False
    assert flat.verdicts["memory"].startswith("does not fit")
    needed = flat.verdicts["gpus_needed"]
    assert needed.startswith("not with 10 shards: 10 shards do not fit; fewest: ")
    shards = int(needed.split(" as ")[1].split(" shards")[0].replace(",", ""))
    # The fewest layout holds its shard: (1544 B x vectors per shard + 3 GB) within 90% of 16 GB.
    assert 1544 * math.ceil(1e9 / shards) + 3e9 <= 0.9 * 16e9


def test_coordinator_bound_target_says_so(t4: GpuType) -> None:
    plan = sp.plan_search(1_000_000, 128, 10, "t4", t4, 0.95, qps_target=8000)
    assert (
        plan.kind("ivf-pq").verdicts["gpus_needed"].startswith("no GPU count: one coordinator sustains 7,000")
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ({**CALIBRATION, "fanout": []}, "fanout is missing or not a non-empty list"),
        ({k: v for k, v in CALIBRATION.items() if k != "dataset"}, "dataset is missing"),
        (
            {**CALIBRATION, "fanout": [{"nshards": 4, "recall": 0.96}]},
            r"fanout\[0\].mean_shards_touched is missing",
        ),
        (
            {**CALIBRATION, "fanout": [{"nshards": 4, "recall": 0.96, "mean_shards_touched": 5}]},
            r"fanout\[0\].mean_shards_touched is more than nshards \(4\)",
        ),
        (
            {**CALIBRATION, "fanout": [{"nshards": 4, "recall": 1.2, "mean_shards_touched": 2}]},
            r"fanout\[0\].recall must be in \(0, 1\]",
        ),
        (
            {
                **CALIBRATION,
                "fanout": [{"nshards": 4, "recall": 0.9, "mean_shards_touched": 2, "replicate": 2}],
            },
            r"fanout\[0\].replicate must be a share from 0 to 1, got 2",
        ),
        (
            {
                **CALIBRATION,
                "fanout": [{"nshards": 4, "recall": 0.9, "mean_shards_touched": 2, "nprobe": 2.5}],
            },
            r"fanout\[0\].nprobe must be a whole number, got 2.5",
        ),
        (
            {
                **CALIBRATION,
                "fanout": [{"nshards": 4, "recall": 0.9, "mean_shards_touched": 2, "shard_margin": -1}],
            },
            r"fanout\[0\].shard_margin must be a number >= 0, got -1",
        ),
        ({**CALIBRATION, "local": {"hnsww": {}}}, "local.hnsww is not a calibrated kind"),
        (
            {**CALIBRATION, "local": {"hnsw": {"recall": 0.9, "shard_vectors": 10}}},
            "local.hnsw.cpu_seconds_per_query_per_shard is missing",
        ),
        (
            {**CALIBRATION, "local": {"ivf-flat": {"recall": 0.9, "scanned_share": 2}}},
            r"local.ivf-flat.scanned_share must be in \(0, 1\]",
        ),
        (
            {**CALIBRATION, "local": {"ivf-flat": {"recall": 0.9, "scanned_fraction": 0.1}}},
            r"local.ivf-flat.scanned_fraction is the old key .*: give scanned_share, the share nprobe/nlist",
        ),
        ({**CALIBRATION, "dim": "384"}, "dim must be a number > 0"),
    ],
)
def test_malformed_calibration_names_the_key(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(HpcragError, match=message):
        sp.load_calibration(path)


def test_missing_calibration_file(tmp_path: Path) -> None:
    with pytest.raises(HpcragError, match=r"calibration file .*absent\.json not found"):
        sp.load_calibration(tmp_path / "absent.json")


def test_calibration_kinds_are_optional(tmp_path: Path) -> None:
    data = {**CALIBRATION, "local": {"hnsw": CALIBRATION["local"]["hnsw"]}}  # type: ignore[index]
    plan = sp.plan_search(
        1_000_000,
        128,
        10,
        "tera",
        TERA_GPU,
        0.95,
        calibration=sp.load_calibration(write_calibration(tmp_path, data)),
    )
    assert plan.kind("ivf-flat").figures["scanned_fraction"].value == pytest.approx(1 / 16 * 10 / 3)
    assert plan.kind("ivf-flat").figures["scanned_fraction"].source.startswith("assumed")
    assert plan.kind("hnsw").figures["qps_per_gpu"].value == pytest.approx(80_000)
