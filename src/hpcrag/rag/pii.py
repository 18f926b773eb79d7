"""PII guard: finds personal data in questions and documents and masks it, refuses it or lets it pass.

Detection is Presidio's pattern recognisers only (no spaCy model, no NER, no network), so it finds
structured identifiers, never names or places:

- EMAIL_ADDRESS (domain checked against tldextract's bundled public-suffix snapshot, offline),
- PHONE_NUMBER (python-phonenumbers, kept only when written like a phone number: a leading "+" and
  digit, a parenthesised area code, or three or more digit groups with one kind of separator; bare
  digit runs such as job ids and sizes, decimals and "60001-63000" port ranges are not phone numbers),
- CREDIT_CARD (Luhn-checked), IBAN_CODE (checksum), CRYPTO (Bitcoin address checksum),
- US_SSN and US_ITIN (dashed or spaced forms only: the bare nine-digit forms score below the threshold
  because without NER no context words can raise them),
- IP_ADDRESS, globally routable addresses only: private, loopback, link-local and other reserved
  addresses (10.0.0.1, 127.0.0.1, fd00::1) name machines inside a site, not people, and HPC docs are
  full of them.

Left out on purpose: URL and DATE_TIME (every doc has them), US_BANK_NUMBER, US_PASSPORT, UK_NHS and
similar (any 8-10 digit number matches), MAC_ADDRESS (cluster hardware, not people).
On the 130 Slurm HTML docs (2.4 MB of text) the guard finds the published contact and example e-mail
addresses and the public-looking example IPs (12.34.56.78, 1.2.3.4, one "Section 2.3.1.1") and nothing
else.

Findings carry the entity type, span and score, never the matched value.
The Presidio engines are built once per process, lazily and under a lock (building takes seconds).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, get_args

from hpcrag.errors import HpcragError

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine
    from presidio_anonymizer import AnonymizerEngine

PiiPolicy = Literal["mask", "refuse", "off"]

DEFAULT_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "CRYPTO",
    "US_SSN",
    "US_ITIN",
    "IP_ADDRESS",
)
# Pattern-only scores: checksum-validated matches 1.0, IP 0.6, dashed SSN/ITIN 0.5, phone 0.4; the
# "very weak" bare-number patterns (0.05-0.3) stay below it.
DEFAULT_SCORE_THRESHOLD = 0.4

_LANGUAGE = "en"
_REFUSE_FIX = "remove it, or set the PII policy to 'mask' to replace it with placeholders"
_PHONE_PREFIX = re.compile(r"\+\d|\(\d{1,5}\)")  # international prefix or parenthesised area code
_DIGIT_GROUP = re.compile(r"\d+")
_SEPARATOR_RUN = re.compile(r"\D+")


class PiiRefused(HpcragError):
    """The PII policy is "refuse" and the text contains personal data."""


@dataclass(frozen=True)
class PiiFinding:
    """One piece of personal data: its kind and where it is, never its value."""

    entity_type: str
    start: int
    end: int
    score: float


class PiiGuard:
    """Scans, masks or refuses text containing the configured PII entity types."""

    def __init__(
        self,
        entities: tuple[str, ...] = DEFAULT_ENTITIES,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    ) -> None:
        unknown = sorted(set(entities) - set(DEFAULT_ENTITIES))
        if unknown:
            raise HpcragError(f"unsupported PII entity types {unknown}; choose from {list(DEFAULT_ENTITIES)}")
        self.entities = tuple(entities)
        self.score_threshold = score_threshold

    def scan(self, text: str) -> list[PiiFinding]:
        """The PII in `text`, in order of position."""
        return [_finding(result) for result in self._analyze(text)]

    def mask(self, text: str) -> tuple[str, list[PiiFinding]]:
        """`text` with each finding replaced by "<ENTITY_TYPE>", and the findings (spans in `text`)."""
        results = self._analyze(text)
        if not results:
            return text, []
        _, anonymizer = _engines()
        masked = anonymizer.anonymize(text=text, analyzer_results=results).text
        return masked, [_finding(result) for result in results]

    def apply(self, text: str, policy: PiiPolicy, what: str) -> str:
        """`text` as the policy lets it through; `what` names the text in the refusal message."""
        if policy == "off":
            return text
        if policy == "mask":
            return self.mask(text)[0]
        if policy == "refuse":
            findings = self.scan(text)
            if findings:
                raise PiiRefused(f"{what} contains personal data ({_summary(findings)}); {_REFUSE_FIX}")
            return text
        raise HpcragError(f"unknown PII policy {policy!r}; use one of {', '.join(get_args(PiiPolicy))}")

    def _analyze(self, text: str) -> list[Any]:
        if not text:
            return []
        analyzer, _ = _engines()
        results = analyzer.analyze(
            text=text, language=_LANGUAGE, entities=list(self.entities), score_threshold=self.score_threshold
        )
        return sorted(results, key=lambda result: (result.start, result.end))


def _summary(findings: list[PiiFinding]) -> str:
    counts = Counter(finding.entity_type for finding in findings)
    kinds = ", ".join(f"{count} {entity}" for entity, count in sorted(counts.items()))
    return f"{len(findings)} finding{'s' if len(findings) != 1 else ''}: {kinds}"


def _finding(result: Any) -> PiiFinding:
    return PiiFinding(result.entity_type, result.start, result.end, float(result.score))


def _written_as_phone(candidate: str) -> bool:
    """Whether a phonenumbers match is laid out like a phone number, not a bare or decimal number."""
    if _PHONE_PREFIX.match(candidate):
        return True
    separators = set(_SEPARATOR_RUN.findall(candidate))
    return len(_DIGIT_GROUP.findall(candidate)) >= 3 and len(separators) == 1


_lock = threading.Lock()


def _engines() -> tuple[AnalyzerEngine, AnonymizerEngine]:
    with _lock:
        return _build_engines()


@cache
def _build_engines() -> tuple[AnalyzerEngine, AnonymizerEngine]:
    import ipaddress

    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        CryptoRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsItinRecognizer,
        UsSsnRecognizer,
    )
    from presidio_anonymizer import AnonymizerEngine

    # Presidio's EmailRecognizer calls tldextract's module-level extractor, which downloads the public
    # suffix list on first use and logs a traceback when offline; this one reads only the bundled
    # snapshot and writes no cache.
    offline_suffixes = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=())

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_suffixes(pattern_text).fqdn != ""

    class GlobalIpRecognizer(IpRecognizer):
        def invalidate_result(self, pattern_text: str) -> bool:
            try:
                return not ipaddress.ip_interface(pattern_text).ip.is_global
            except ValueError:
                return True

    class WrittenPhoneRecognizer(PhoneRecognizer):
        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            results = super().analyze(text, entities, nlp_artifacts)
            return [result for result in results if _written_as_phone(text[result.start : result.end])]

    recognizers = [
        OfflineEmailRecognizer(),
        WrittenPhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        CryptoRecognizer(),
        UsSsnRecognizer(),
        UsItinRecognizer(),
        GlobalIpRecognizer(),
    ]
    nlp_engine = NoOpNlpEngine(models=[{"lang_code": _LANGUAGE, "model_name": "no_op"}])
    analyzer = AnalyzerEngine(
        registry=RecognizerRegistry(recognizers, supported_languages=[_LANGUAGE]),
        nlp_engine=nlp_engine,
        supported_languages=[_LANGUAGE],
    )
    return analyzer, AnonymizerEngine()


class StreamingMask:
    """Masks personal data in a text that arrives in pieces (a streamed answer).

    Text is held back until a sentence or line ends, so that a number or address split over two
    pieces is masked whole; a run of HOLD_LIMIT characters without an end is released but for its
    last KEEP_TAIL characters, which may still be the start of one.
    """

    HOLD_LIMIT = 1024
    KEEP_TAIL = 96
    _END = re.compile(r"[.!?][\"')\]]*\s+|\n")

    def __init__(self, guard: PiiGuard | None = None) -> None:
        self._guard = guard or PiiGuard()
        self._held = ""

    def feed(self, text: str) -> str:
        """What of the text so far can be shown now, masked."""
        self._held += text
        ends = [match.end() for match in self._END.finditer(self._held)]
        cut = ends[-1] if ends else 0
        if not cut and len(self._held) > self.HOLD_LIMIT:
            cut = len(self._held) - self.KEEP_TAIL
        ready, self._held = self._held[:cut], self._held[cut:]
        return self._guard.mask(ready)[0] if ready else ""

    def finish(self) -> str:
        """The rest, masked: call once the text is complete."""
        ready, self._held = self._held, ""
        return self._guard.mask(ready)[0] if ready else ""
