"""PiiGuard: what it finds, what it leaves alone in HPC text, and the three policies."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from hpcrag.errors import HpcragError
from hpcrag.rag.pii import PiiFinding, PiiGuard, PiiRefused, StreamingMask


@pytest.fixture(scope="module")
def guard() -> PiiGuard:
    return PiiGuard()


def _found(guard: PiiGuard, text: str) -> list[tuple[str, str]]:
    return [(f.entity_type, text[f.start : f.end]) for f in guard.scan(text)]


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        ("write to jane.doe@example.org today", "EMAIL_ADDRESS", "jane.doe@example.org"),
        ("call +1 212-555-0199 now", "PHONE_NUMBER", "+1 212-555-0199"),
        ("call (212) 555-0199 now", "PHONE_NUMBER", "(212) 555-0199"),
        ("office +44 20 7946 0958", "PHONE_NUMBER", "+44 20 7946 0958"),
        ("card 4111 1111 1111 1111 expires", "CREDIT_CARD", "4111 1111 1111 1111"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN_CODE", "DE89 3704 0044 0532 0130 00"),
        ("my ssn is 536-22-1234", "US_SSN", "536-22-1234"),
        ("login from 8.8.8.8 failed", "IP_ADDRESS", "8.8.8.8"),
        ("login from 2a00:1450:4001:82b::200e failed", "IP_ADDRESS", "2a00:1450:4001:82b::200e"),
    ],
)
def test_finds_each_entity_type(guard: PiiGuard, text: str, entity: str, value: str) -> None:
    assert _found(guard, text) == [(entity, value)]


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails the Luhn check",
        "NodeName=node[01-04] NodeAddr=10.0.0.[1-4] SlurmctldHost=head(10.0.0.1:6817)",
        "loopback 127.0.0.1, link-local fe80::1, docs 2001:db8::1 and 192.168.1.20",
        "JobId=1234567 ArrayJobId=1234-5678 --mem=16000 SrunPortRange=60001-63000",
        "sbatch --array=1-1000%50 --time=2024-01-15T10:00:00 job.sh # Slurm 23.11.10",
        "usage: 2**(-.3875 / .3) = 0.408479, range is +/- 2147483645, file /proc/1647372/fd/7",
        "see https://slurm.schedmd.com/sbatch.html#OPT_exclusive for details",
    ],
)
def test_hpc_text_is_not_pii(guard: PiiGuard, text: str) -> None:
    assert guard.scan(text) == []


def test_mask_replaces_each_finding_with_its_type(guard: PiiGuard) -> None:
    text = "Mail jane.doe@example.org or call +1 212-555-0199 about node 10.0.0.1"
    masked, findings = guard.mask(text)
    assert masked == "Mail <EMAIL_ADDRESS> or call <PHONE_NUMBER> about node 10.0.0.1"
    assert [(f.entity_type, text[f.start : f.end]) for f in findings] == [
        ("EMAIL_ADDRESS", "jane.doe@example.org"),
        ("PHONE_NUMBER", "+1 212-555-0199"),
    ]


def test_mask_leaves_clean_text_alone(guard: PiiGuard) -> None:
    assert guard.mask("srun -N2 --exclusive hostname") == ("srun -N2 --exclusive hostname", [])
    assert guard.mask("") == ("", [])


def test_findings_never_carry_the_value(guard: PiiGuard) -> None:
    findings = guard.scan("reach jane.doe@example.org")
    assert findings == [PiiFinding("EMAIL_ADDRESS", 6, 26, 1.0)]
    assert "jane" not in repr(findings)


def test_apply_off_and_mask(guard: PiiGuard) -> None:
    text = "I am jane.doe@example.org"
    assert guard.apply(text, "off", "question") == text
    assert guard.apply(text, "mask", "question") == "I am <EMAIL_ADDRESS>"


def test_apply_refuse_names_types_count_and_what_but_not_values(guard: PiiGuard) -> None:
    text = "jane.doe@example.org, bob@example.com, +1 212-555-0199"
    with pytest.raises(PiiRefused) as refused:
        guard.apply(text, "refuse", "document docs/a.html")
    message = str(refused.value)
    assert message.startswith("document docs/a.html contains personal data (3 findings: 2 EMAIL_ADDRESS, 1 ")
    assert "PHONE_NUMBER" in message and "'mask'" in message
    assert "jane" not in message and "555" not in message
    assert isinstance(refused.value, HpcragError)


def test_apply_refuse_passes_clean_text(guard: PiiGuard) -> None:
    assert guard.apply("How do I use #SBATCH --exclusive?", "refuse", "question") == (
        "How do I use #SBATCH --exclusive?"
    )


def test_unknown_policy_and_entity_are_user_errors(guard: PiiGuard) -> None:
    with pytest.raises(HpcragError, match="unknown PII policy 'redact'; use one of mask, refuse, off"):
        guard.apply("text", "redact", "question")  # type: ignore[arg-type]
    with pytest.raises(HpcragError, match=r"unsupported PII entity types \['PERSON'\]"):
        PiiGuard(entities=("PERSON",))


def test_entity_subset_limits_the_scan(guard: PiiGuard) -> None:
    emails_only = PiiGuard(entities=("EMAIL_ADDRESS",))
    assert [f.entity_type for f in emails_only.scan("jane@example.org +1 212-555-0199")] == ["EMAIL_ADDRESS"]


def test_first_use_is_offline_silent_and_builds_once() -> None:
    """With the network refused, concurrent first scans build one analyzer and print nothing."""
    script = textwrap.dedent(
        """
        import socket, threading
        def refuse(*args, **kwargs):
            raise OSError("network disabled by the test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        import presidio_analyzer
        builds = []
        original_init = presidio_analyzer.AnalyzerEngine.__init__
        def counting_init(self, *args, **kwargs):
            builds.append(1)
            original_init(self, *args, **kwargs)
        presidio_analyzer.AnalyzerEngine.__init__ = counting_init

        from hpcrag.rag.pii import PiiGuard
        results = []
        def scan():
            results.append([f.entity_type for f in PiiGuard().scan("mail jane.doe@example.org")])
        threads = [threading.Thread(target=scan) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(len(builds), results)
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.strip() == "1 " + str([["EMAIL_ADDRESS"]] * 4)


def test_streaming_mask_masks_values_split_over_pieces(guard: PiiGuard) -> None:
    text = "Card 4111 1111 1111 1111 expires soon. Mail bob@example.org\nor call +1 212 555 0100 today."
    whole = guard.mask(text)[0]
    for size in (1, 3, 7, 50):
        mask = StreamingMask(guard)
        pieces = [mask.feed(text[i : i + size]) for i in range(0, len(text), size)] + [mask.finish()]
        assert "".join(pieces) == whole
        assert not any("4111" in p or "bob@" in p or "555" in p for p in pieces)


def test_streaming_mask_releases_a_long_run_without_a_sentence_end(guard: PiiGuard) -> None:
    mask = StreamingMask(guard)
    text = "word " * 300
    shown = mask.feed(text)
    assert shown == text[: len(text) - StreamingMask.KEEP_TAIL]
    assert shown + mask.finish() == text
