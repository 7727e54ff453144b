"""Routing rules: which destinations an instance is forwarded to, and in what syntaxes.

Every matching rule applies (a gateway usually copies one study to several places); a
destination named by two rules is queued once, by the first. Rules match like the
compression policy (:mod:`compacs.rules`), and also on any indexed attribute by its
keyword (``StudyDescription = "CHEST"``), since they are evaluated at ingest.

Per destination, the transfer syntaxes to offer are listed most preferred first
(PS3.8 9.3.2.2: each on a presentation context of its own, so the destination may
accept any of them); ``stored`` is the syntax the instance is stored in at send time.
A lossy syntax is allowed only when the rule says ``lossy = true``: the destination then
receives a derived instance with a new SOP Instance UID (PS3.3 C.7.6.1.1.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from compacs.codecs.table import codec_for
from compacs.dicom.syntaxes import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from compacs.index.base import Forward
from compacs.rules import ATTRIBUTE_KEYS, MATCH_KEYS, Match, RuleError, matches, parse_match

STORED = "stored"
UNCOMPRESSED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
DEFAULT_SYNTAXES = ("stored", "jpeg-ls", "uncompressed")
"""What ``--forward`` offers: the stored syntax, then JPEG-LS lossless, then native."""

ROUTING_KEYS = {**MATCH_KEYS, **ATTRIBUTE_KEYS}
_RULE_KEYS = set(ROUTING_KEYS) | {
    "to",
    "syntaxes",
    "after",
    "commit",
    "lossy",
    "retain_days",
    "near",
    "quality",
    "ratio",
}
_OPTION_KEYS = ("near", "quality", "ratio")


def syntax_uids(names: list[str], lossy: bool, where: str) -> tuple[str, ...]:
    """Transfer syntax UIDs (and ``stored``) from names in a rule, in order, once each."""
    out: list[str] = []
    for name in names:
        if name == STORED:
            uids: tuple[str, ...] = (STORED,)
        elif name in ("uncompressed", *UNCOMPRESSED):
            uids = UNCOMPRESSED if name == "uncompressed" else (name,)
        else:
            try:
                codec = codec_for(name)
            except KeyError as exc:
                raise RuleError(f"{where}: {exc.args[0]}") from None
            if not codec.lossless and not lossy:
                raise RuleError(
                    f"{where}: {codec.name} is lossy; a route may use it only with lossy = true "
                    "(PS3.3 C.7.6.1.1.5: the destination gets a derived image with a new "
                    "SOP Instance UID)"
                )
            uids = (codec.transfer_syntax,)
        out += [uid for uid in uids if uid not in out]
    if not out:
        raise RuleError(f"{where}: syntaxes is empty")
    return tuple(out)


@dataclass(frozen=True)
class Destination:
    address: str
    """``AET@HOST:PORT``."""
    syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    match: Match
    destinations: tuple[Destination, ...]
    wait_compression: bool = True
    commit: bool = False
    lossy: bool = False
    codec_options: Mapping[str, Any] = field(default_factory=dict)
    retain_days: float | None = None

    def forwards(self) -> list[Forward]:
        return [
            Forward(
                destination=d.address,
                syntaxes=d.syntaxes,
                wait_compression=self.wait_compression,
                commit=self.commit,
                lossy=self.lossy,
                codec_options=dict(self.codec_options),
                retain_days=self.retain_days,
            )
            for d in self.destinations
        ]


@dataclass(frozen=True)
class Routing:
    routes: tuple[Route, ...] = ()
    associations: int = 1
    """Associations per destination at once."""
    batch: int = 200
    """Instances of one study sent on one association at most."""
    max_attempts: int = 20
    retry_delay: float = 5.0
    """Seconds before the first retry; doubled per attempt up to ``retry_max_delay``."""
    retry_max_delay: float = 900.0
    commit_timeout: float = 600.0
    """Seconds to wait for a Storage Commitment report before sending again."""

    def forwards_for(self, facts: Mapping[str, Any]) -> tuple[Forward, ...]:
        out: dict[str, Forward] = {}
        for route in self.routes:
            if matches(route.match, facts):
                for forward in route.forwards():
                    out.setdefault(forward.destination, forward)
        return tuple(out.values())

    @property
    def waits_for_compression(self) -> bool:
        """Whether a route holds its forwards until the instance is compressed (``after =
        "compression"``): only then does a finished compression job make one due."""
        return any(route.wait_compression for route in self.routes)

    def retry_at(self, now: float, attempts: int) -> float:
        factor: int = 2 ** max(attempts - 1, 0)  # int ** int is Any to typeshed (negative: float)
        return now + min(self.retry_delay * factor, self.retry_max_delay)


def forward_everything(addresses: list[str]) -> Route:
    """The route of ``compacs serve --forward``: every instance, default syntaxes."""
    syntaxes = syntax_uids(list(DEFAULT_SYNTAXES), False, "--forward")
    return Route(match={}, destinations=tuple(Destination(a, syntaxes) for a in addresses))


def parse_route(doc: Mapping[str, Any], where: str, resolve: Any) -> Route:
    """A route from its ``[[forwarding.rules]]`` table. ``resolve(name)`` turns a peer's
    AE title or ``AET@HOST:PORT`` into ``AET@HOST:PORT`` (or raises RuleError)."""
    unknown = set(doc) - _RULE_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    match = parse_match(doc, where, ROUTING_KEYS)
    lossy = doc.get("lossy", False)
    commit = doc.get("commit", False)
    if not isinstance(lossy, bool) or not isinstance(commit, bool):
        raise RuleError(f"{where}: lossy and commit must be true or false")
    after = doc.get("after", "compression")
    if after not in ("ingest", "compression"):
        raise RuleError(f"{where}: after must be 'ingest' or 'compression'")
    if lossy and commit:
        raise RuleError(
            f"{where}: commit = true with lossy = true is not supported: the destination "
            "commits the derived instance, which the queue does not track"
        )
    retain = doc.get("retain_days")
    if retain is not None and (
        isinstance(retain, bool) or not isinstance(retain, int | float) or retain < 0
    ):
        raise RuleError(f"{where}: retain_days must be a number of days >= 0")
    default_syntaxes = doc.get("syntaxes", list(DEFAULT_SYNTAXES))
    targets = doc.get("to")
    if isinstance(targets, str | dict):
        targets = [targets]
    if not isinstance(targets, list) or not targets:
        raise RuleError(f"{where}: to must name one or more destinations")
    destinations = []
    for target in targets:
        if isinstance(target, dict):
            if set(target) - {"ae", "syntaxes"} or "ae" not in target:
                raise RuleError(f"{where}: a destination table has keys ae and syntaxes")
            name, names = target["ae"], target.get("syntaxes", default_syntaxes)
        else:
            name, names = target, default_syntaxes
        if not isinstance(name, str) or not isinstance(names, list):
            raise RuleError(f"{where}: destination {name!r}: syntaxes must be a list")
        syntaxes = syntax_uids([str(n) for n in names], lossy, f"{where}: {name}")
        try:
            address = resolve(name)
        except RuleError as exc:
            raise RuleError(f"{where}: {exc}") from None
        destinations.append(Destination(address, syntaxes))
    options = {k: doc[k] for k in _OPTION_KEYS if k in doc}
    return Route(
        match=match,
        destinations=tuple(destinations),
        wait_compression=after == "compression",
        commit=commit,
        lossy=lossy,
        codec_options=options,
        retain_days=None if retain is None else float(retain),
    )
