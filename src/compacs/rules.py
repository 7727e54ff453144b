"""Ordered rules over an instance's facts: the compression policy (and routing).

A rule matches when every key it names matches (a list means "any of"); the first
matching rule wins. Facts come from the index, so a rule can be evaluated at ingest, by
a background worker, or by ``compacs compress`` over what is already stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from compacs.codecs.table import CODECS, RECOMPRESSORS, Codec, codec_for
from compacs.dicom.attributes import INDEXED, INTEGER_VRS
from compacs.dicom.syntaxes import BY_UID

# match key -> (fact name, value type)
MATCH_KEYS: dict[str, tuple[str, type]] = {
    "modality": ("modality", str),
    "sop_class": ("sop_class_uid", str),
    "calling_ae": ("calling_ae", str),
    "called_ae": ("called_ae", str),
    "photometric": ("photometric_interpretation", str),
    "bits_stored": ("bits_stored", int),
    "received_syntax": ("transfer_syntax_received", str),
}
# Routing rules may also name any indexed attribute by its keyword (facts at ingest).
ATTRIBUTE_KEYS: dict[str, tuple[str, type]] = {
    attr.keyword: (attr.column, int if attr.vr in INTEGER_VRS else str)
    for level in INDEXED.values()
    for attr in level
}

Match = Mapping[str, frozenset[Any]]
"""fact name -> the values it may take."""

ACTIONS_WITHOUT_CODEC = ("keep", "smallest")
LOSSY_CODECS = tuple(c.name for c in CODECS if not c.lossless)
DEFAULT_CANDIDATES = ("jpeg-ls", "jpeg-2000", "htj2k")


class RuleError(ValueError):
    pass


@dataclass(frozen=True)
class Decision:
    codecs: tuple[Codec, ...]
    """Encode with each, keep the smallest verified result (one codec: just that one)."""
    options: Mapping[str, Any]
    lossy: bool
    keep_original: bool
    rule: int
    """1-based index of the rule that matched (0: the built-in default)."""

    @property
    def targets(self) -> frozenset[str]:
        """The transfer syntaxes this decision may store an instance in."""
        return frozenset(c.transfer_syntax for c in self.codecs)


def matches(match: Match, facts: Mapping[str, Any]) -> bool:
    return all(facts.get(fact) in allowed for fact, allowed in match.items())


def parse_match(
    doc: Mapping[str, Any], where: str, keys: Mapping[str, tuple[str, type]] = MATCH_KEYS
) -> dict[str, frozenset[Any]]:
    """The match part of a rule table: each key in ``keys`` it names, as fact -> values."""
    match: dict[str, frozenset[Any]] = {}
    for key, (fact, kind) in keys.items():
        if key not in doc:
            continue
        values = doc[key] if isinstance(doc[key], list) else [doc[key]]
        if not values or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
            raise RuleError(f"{where}: {key} must be a {kind.__name__} or a list of them")
        match[fact] = frozenset(values)
    return match


@dataclass(frozen=True)
class Rule:
    match: Match
    action: str
    codecs: tuple[Codec, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    lossy: bool = False
    keep_original: bool = True

    def matches(self, facts: Mapping[str, Any]) -> bool:
        return matches(self.match, facts)


ARCHIVE_CANDIDATES = ("jpeg-ls", "jpeg-xl", "jpeg-2000")
ARCHIVE_EFFORT = 7
"""JPEG XL lossless effort of the archive tier (libjxl 1..9; the ingest default is 3)."""


@dataclass(frozen=True)
class ArchiveTier:
    """The archive tier (issue 16): instances stored by the ingest tier for ``after_days``
    are re-encoded with the smallest verified lossless encoding of ``candidates`` (PS3.5
    8.2: each a lossless transfer syntax), during the ``idle`` local-time window."""

    after_days: int | None = None
    """Age since the instance was stored; None: no automatic tier (``compacs compress
    --archive`` still applies it)."""
    idle: tuple[int, int] | None = None
    """Local-time window as minutes after midnight (start, end); may wrap past midnight.
    None: any time."""
    candidates: tuple[Codec, ...] = tuple(codec_for(n) for n in ARCHIVE_CANDIDATES)
    effort: int = ARCHIVE_EFFORT

    def decision(self) -> Decision:
        """``smallest`` over the candidates, lossless, JPEG XL at ``effort``."""
        return Decision(self.candidates, {"effort": self.effort}, False, True, 0)

    def in_window(self, minute: int) -> bool:
        """Whether ``minute`` (local minutes after midnight) is inside the idle window."""
        if self.idle is None:
            return True
        start, end = self.idle
        if start <= end:
            return start <= minute < end
        return minute >= start or minute < end  # e.g. 22:00-06:00


def parse_idle(text: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` as minutes after midnight; ValueError when it is not that."""
    parts = text.split("-")
    if len(parts) != 2:
        raise ValueError(text)
    minutes = []
    for part in parts:
        hh, sep, mm = part.strip().partition(":")
        if not sep or not (hh.isdigit() and mm.isdigit() and len(mm) == 2):
            raise ValueError(text)
        if not (0 <= int(hh) <= 23 and 0 <= int(mm) <= 59):
            raise ValueError(text)
        minutes.append(int(hh) * 60 + int(mm))
    if minutes[0] == minutes[1]:
        raise ValueError(text)
    return minutes[0], minutes[1]


class When(StrEnum):
    """When the policy compresses what arrives (``[compression] when``)."""

    INGEST = "ingest"
    """Before the C-STORE response, from the bytes still in memory."""
    DEFERRED = "deferred"
    """By the background workers, ``delay`` seconds after the instance is stored."""
    OFF = "off"
    """Not at all (``compacs compress`` still can)."""


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    when: When = When.DEFERRED
    delay: float = 0.0
    workers: int = 2
    require_smaller: bool = True
    recompress_lossy: bool = False
    recompress_jpeg: bool = True
    """JPEG baseline input is recompressed as JPEG XL JPEG Recompression (PS3.5 8.2.15),
    every bit of the received JPEG kept, unless a matching rule says ``keep``."""
    archive: ArchiveTier = field(default_factory=ArchiveTier)

    def archive_verdict(self, facts: Mapping[str, Any]) -> Decision | str:
        """What the archive tier does with an instance, or why it keeps it: whatever the
        rules keep as it is (no pixels, a keep rule) stays; so does lossy input (its
        JPEG bitstream, kept or recompressed bit for bit, is what was received: decoding
        it to re-encode the pixels losslessly would only grow it, PS3.3 C.7.6.1.1.5) and
        what a lossy rule made (only lossless candidates here); the rest gets the tier's
        ``smallest``. :meth:`verdict` itself is unchanged."""
        verdict = self.verdict(facts)
        if isinstance(verdict, str):
            return verdict
        received = BY_UID.get(str(facts.get("transfer_syntax_received")))
        if received is not None and not received.lossless:
            return "lossy input: the archive tier keeps it"
        if verdict.lossy:
            return "lossy rule: not for the archive tier"
        return self.archive.decision()

    def decide(self, facts: Mapping[str, Any]) -> Decision | None:
        """What to do with an instance, or None to keep it as it is."""
        verdict = self.verdict(facts)
        return verdict if isinstance(verdict, Decision) else None

    def verdict(self, facts: Mapping[str, Any]) -> Decision | str:
        """What to do with an instance, or why it is kept as it is (a reason without
        numbers of this instance, so that reasons can be counted)."""
        if self.when is When.OFF:
            return "compression off"
        if facts.get("photometric_interpretation") is None:
            return "not compressible: no image pixels"  # SR, PDF, waveforms
        bits = facts.get("bits_allocated")
        if bits not in (8, 16):  # SEG (1), float or 32-bit: these codecs carry 8 and 16
            return f"not compressible: Bits Allocated {bits}"
        received = BY_UID.get(str(facts.get("transfer_syntax_received")))
        recompressor = RECOMPRESSORS.get(received.uid) if received is not None else None
        matched = self._first_match(facts)
        if recompressor is not None and self.recompress_jpeg:
            # the received bitstreams recompressed (PS3.5 8.2.15), unless the first matching
            # rule keeps the instance; a rule naming that codec lends its options
            if matched is not None and matched[1].action == "keep":
                return f"kept by rule {matched[0]}"
            if matched is not None and matched[1].codecs == (recompressor,):
                n, rule = matched
                return Decision(rule.codecs, rule.options, False, rule.keep_original, n)
            return Decision((recompressor,), {}, False, True, 0)
        if received is not None and not received.lossless and not self.recompress_lossy:
            return "lossy input kept"  # re-encoding gains nothing (PS3.3 C.7.6.1.1.5)
        if matched is None:
            return "no rule matches"
        n, rule = matched
        if rule.action == "keep":
            return f"kept by rule {n}"
        return Decision(rule.codecs, rule.options, rule.lossy, rule.keep_original, n)

    def _first_match(self, facts: Mapping[str, Any]) -> tuple[int, Rule] | None:
        """The first rule matching ``facts`` and its 1-based number, or None."""
        return next(((n, r) for n, r in enumerate(self.rules, 1) if r.matches(facts)), None)


DEFAULT_RULES = (Rule(match={}, action="jpeg-ls", codecs=(codec_for("jpeg-ls"),)),)
DEFAULT_POLICY = Policy(rules=DEFAULT_RULES)

_RULE_KEYS = set(MATCH_KEYS) | {
    "action",
    "candidates",
    "lossy",
    "keep_original",
    "near",
    "quality",
    "ratio",
    "effort",
}


def parse_rule(doc: Mapping[str, Any], where: str) -> Rule:
    """A rule from its TOML table; errors name ``where`` and the key."""
    unknown = set(doc) - _RULE_KEYS
    if unknown:
        raise RuleError(
            f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_RULE_KEYS))})"
        )
    match = parse_match(doc, where)
    action = doc.get("action")
    if not isinstance(action, str):
        raise RuleError(f"{where}: action is required: a codec name or UID, 'keep' or 'smallest'")
    options = {k: doc[k] for k in ("near", "quality", "ratio", "effort") if k in doc}
    lossy = doc.get("lossy", False)
    keep_original = doc.get("keep_original", True)
    if not isinstance(lossy, bool) or not isinstance(keep_original, bool):
        raise RuleError(f"{where}: lossy and keep_original must be true or false")
    if action == "keep":
        return Rule(match, action)
    names = doc.get("candidates", list(DEFAULT_CANDIDATES)) if action == "smallest" else [action]
    if "candidates" in doc and action != "smallest":
        raise RuleError(f"{where}: candidates goes with action = 'smallest'")
    try:
        codecs = tuple(codec_for(str(n)) for n in names)
    except KeyError as exc:
        raise RuleError(f"{where}: {exc.args[0]}") from None
    if not codecs:
        raise RuleError(f"{where}: candidates is empty")
    lossy_codecs = [c.name for c in codecs if not c.lossless]
    if lossy_codecs and not lossy:
        raise RuleError(
            f"{where}: {lossy_codecs[0]} is lossy; a rule allows loss only with lossy = true "
            "(PS3.3 C.7.6.1.1.5: the result is a derived image with a new SOP Instance UID)"
        )
    if lossy and len(lossy_codecs) != len(codecs):
        raise RuleError(
            f"{where}: lossy = true takes lossy codecs only ({', '.join(LOSSY_CODECS)})"
        )
    for codec in codecs:
        problem = codec.option.problem(options) if codec.option else None
        if problem:
            raise RuleError(f"{where}: {codec.name} needs {problem}")
    return Rule(match, action, codecs, options, lossy, keep_original)


def facts_of(instance: Mapping[str, Any]) -> dict[str, Any]:
    """The facts rules match on, from an index row or ingest attributes."""
    facts = {fact: instance.get(fact) for fact, _ in MATCH_KEYS.values()}
    facts["bits_allocated"] = instance.get("bits_allocated")
    return facts
