"""``compacs compress``: apply the current policy (or, with ``--archive``, the archive
tier) to what is already stored."""

from __future__ import annotations

import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple, TextIO

from compacs.admin import console
from compacs.codecs.streams import JPEG_LS_SYNTAXES, first_fragment, jls_misread_reason
from compacs.codecs.table import CODECS
from compacs.dicom import part10
from compacs.index import Catalogue, InstanceFacts
from compacs.index.compression_state import CompressionState
from compacs.index.schema import ARCHIVE_TIER
from compacs.jobs.compress import Compressor, Result
from compacs.rules import Policy
from compacs.storage import BlobStore

REPAIR = "jpeg-ls (repair)"
ARCHIVE = "archive tier"


class Candidate(NamedTuple):
    facts: InstanceFacts
    target: str
    """A codec name, "smallest", :data:`REPAIR` or :data:`ARCHIVE`."""
    reason: str = ""


@dataclass
class Plan:
    """What ``compacs compress`` would do: the instances to compress, each with the name
    of its target, and why every other instance is left as it is (reason -> count)."""

    planned: list[Candidate] = field(default_factory=list)
    not_planned: Counter[str] = field(default_factory=Counter)


def _codec_name(uid: str) -> str:
    return next((c.name for c in CODECS if c.transfer_syntax == uid), uid)


def why_not_planned(facts: InstanceFacts, policy: Policy, retry: bool) -> str | None:
    """Why ``compacs compress`` leaves this instance as it is, or None to plan it.

    The rule for ``smallest``: an instance already stored in one of the candidates is
    reconsidered only by ``--retry``, which encodes it with the other candidates and keeps
    the smallest (the stored object counts as one of them; see Compressor)."""
    state = facts.get("compression")
    if facts.get("tier") == ARCHIVE_TIER:  # the ingest rules would undo the tier's choice
        return "in the archive tier (compress --archive --retry reconsiders it)"
    if state == CompressionState.DERIVED:
        return "lossy derivative made, original kept on purpose"
    left_alone = (CompressionState.FAILED, CompressionState.SKIPPED, CompressionState.KEPT)
    if state in left_alone and not retry:
        return f"{state} before (--retry tries again)"
    decision = policy.decide(facts)
    if decision is None:
        return "the policy keeps it as it is (keep rule, no match, lossy input or no pixels)"
    stored = facts["transfer_syntax_stored"]
    if stored not in decision.targets:
        return None
    if len(decision.codecs) == 1:
        return f"already in its target {decision.codecs[0].name}"
    if retry:
        return None
    names = ", ".join(c.name for c in decision.codecs)
    return f"already in {_codec_name(stored)}, a candidate of smallest ({names}); --retry compares"


def candidates(
    index: Catalogue, policy: Policy, retry: bool, store: BlobStore | None = None
) -> Plan:
    """Instances the policy would change, each with the name of its target; with ``store``,
    also the JPEG-LS objects other decoders misread (see :func:`misread_reason`), whatever
    the policy says: they are re-encoded in JPEG-LS, values kept."""
    plan = Plan()
    for facts in index.instances():
        reason = why_not_planned(facts, policy, retry)
        if reason is None:
            decision = policy.decide(facts)
            assert decision is not None
            target = decision.codecs[0].name if len(decision.codecs) == 1 else "smallest"
            plan.planned.append(Candidate(facts, target))
        elif store is not None and (misread := misread_reason(facts, store)):
            plan.planned.append(Candidate(facts, REPAIR, misread))
        else:
            plan.not_planned[reason] += 1
    return plan


def why_not_archived(facts: InstanceFacts, policy: Policy, retry: bool) -> str | None:
    """Why ``compacs compress --archive`` leaves this instance as it is, or None to plan
    it: any age; an instance the tier already ran on only with ``--retry``."""
    if facts.get("tier") == ARCHIVE_TIER and not retry:
        return "already in the archive tier (--retry tries again)"
    verdict = policy.archive_verdict(facts)
    return verdict if isinstance(verdict, str) else None


def archive_candidates(index: Catalogue, policy: Policy, retry: bool) -> Plan:
    """Every stored instance the archive tier would re-encode, whatever its age."""
    plan = Plan()
    for facts in index.instances():
        reason = why_not_archived(facts, policy, retry)
        if reason is None:
            plan.planned.append(Candidate(facts, ARCHIVE))
        else:
            plan.not_planned[reason] += 1
    return plan


@dataclass
class Gain:
    """Bytes of a group of planned instances, and of a sample of them encoded."""

    instances: int = 0
    stored: int = 0
    sampled: int = 0
    sample_before: int = 0
    sample_after: int = 0

    @property
    def estimated_after(self) -> int:
        """The group's stored bytes scaled by the sample's ratio (exact when every
        instance was sampled)."""
        if not self.sample_before:
            return self.stored
        return round(self.stored * self.sample_after / self.sample_before)


def _sample(items: list[Candidate], size: int) -> list[Candidate]:
    """``size`` items spread evenly over ``items`` (all of them with size 0)."""
    if size <= 0 or len(items) <= size:
        return items
    step = len(items) / size
    return [items[int(i * step)] for i in range(size)]


def estimate_archive(
    compressor: Compressor, plan: list[Candidate], sample: int, out: TextIO
) -> dict[tuple[str, str], Gain]:
    """``--archive --dry-run``: per modality and stored codec, encode (verified, nothing
    written) ``sample`` instances spread over the group (0: all) with the archive tier's
    candidates and scale the group's bytes by their ratio. Prints the table and which
    codec won how often."""
    groups: dict[tuple[str, str], list[Candidate]] = {}
    for c in plan:
        key = (c.facts.get("modality") or "(none)", _codec_name(c.facts["transfer_syntax_stored"]))
        groups.setdefault(key, []).append(c)
    gains: dict[tuple[str, str], Gain] = {}
    winners: Counter[str] = Counter()
    for key, items in sorted(groups.items()):
        gain = gains[key] = Gain(len(items), sum(int(c.facts["bytes_stored"]) for c in items))
        for c in _sample(items, sample):
            result = compressor.trial(c.facts)
            gain.sampled += 1
            gain.sample_before += result.bytes_before
            gain.sample_after += result.bytes_after
            winners[
                _codec_name(result.transfer_syntax or "")
                if result.state == CompressionState.COMPRESSED
                else "stored stays smallest"
            ] += 1
    how = "every instance encoded" if sample <= 0 else f"estimated from up to {sample} per group"
    print(f"archive tier would gain ({how}, verified, nothing written):", file=out)
    total_before = total_after = 0
    for (modality, codec), g in gains.items():
        after = g.estimated_after
        total_before += g.stored
        total_after += after
        print(
            f"  {modality:<6} {codec:<28} {g.instances:>6} inst  sampled {g.sampled:>4}  "
            f"{g.stored / 2**20:9.2f} MiB -> {after / 2**20:9.2f} MiB  "
            f"saves {(g.stored - after) / 2**20:8.2f} MiB ({_percent(g.stored, after)})",
            file=out,
        )
    print(
        f"  total {total_before / 2**20:.2f} MiB -> {total_after / 2**20:.2f} MiB "
        f"({_percent(total_before, total_after)})",
        file=out,
    )
    if winners:
        print(
            "  smallest in the sample: " + ", ".join(f"{k} {v}" for k, v in winners.most_common()),
            file=out,
        )
    return gains


def _percent(before: int, after: int) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "+0.0%"


def misread_reason(facts: InstanceFacts, store: BlobStore) -> str | None:
    """Why the stored JPEG-LS object decodes wrong in other decoders, or None. Only signed
    pixels with Bits Stored < Bits Allocated can be affected; only those are read."""
    syntax = str(facts.get("transfer_syntax_stored"))
    bits_allocated = int(facts.get("bits_allocated") or 0)
    bits_stored = int(facts.get("bits_stored") or 0)
    signed = facts.get("pixel_representation") == 1
    if syntax not in JPEG_LS_SYNTAXES or not signed or not 0 < bits_stored < bits_allocated:
        return None
    ds = part10.read(store.get(facts["storage_key"]))
    fragment = first_fragment(ds.PixelData) if "PixelData" in ds else b""
    return jls_misread_reason(syntax, bits_allocated, bits_stored, signed, fragment)


@dataclass
class Summary:
    planned: int = 0
    states: Counter[str] = field(default_factory=Counter)
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    """The note of each failed instance: why it could not be decoded or encoded."""


def _run(compressor: Compressor, candidate: Candidate, retry: bool) -> Result:
    if candidate.target == REPAIR:
        return compressor.reencode(candidate.facts, candidate.reason)
    if candidate.target == ARCHIVE:
        return compressor.process(candidate.facts, tier=ARCHIVE_TIER)
    return compressor.process(candidate.facts, reconsider=retry)


def compress_stored(
    compressor: Compressor,
    index: Catalogue,
    policy: Policy,
    *,
    workers: int,
    retry: bool,
    dry_run: bool,
    archive: bool = False,
    sample: int = 5,
    out: TextIO = sys.stdout,
) -> Summary:
    """Apply the policy to what is stored; ``archive``: the archive tier to everything,
    whatever its age (``--dry-run`` then estimates the gain from ``sample`` instances per
    modality and stored codec, :func:`estimate_archive`)."""
    if archive:
        found = archive_candidates(index, policy, retry)
    else:
        found = candidates(index, policy, retry, compressor.store)
    plan = found.planned
    summary = Summary(planned=len(plan))
    by_target = Counter(c.target for c in plan)
    by_modality = Counter(c.facts.get("modality") or "(none)" for c in plan)
    print(
        f"{len(plan)} instance(s) to compress "
        f"({sum(c.facts['bytes_stored'] for c in plan) / 2**20:.1f} MiB stored now)",
        file=out,
    )
    for name, counts in (("by target", by_target), ("by modality", by_modality)):
        if counts:
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()), file=out)
    for c in plan:
        if c.reason:
            print(f"  {c.target} {c.facts['sop_instance_uid']}: {c.reason}", file=out)
    for reason, count in found.not_planned.most_common():
        print(f"  not planned: {count} {reason}", file=out)
    if dry_run and archive and plan:
        estimate_archive(compressor, plan, sample, out)
    if dry_run or not plan:
        return summary
    progress = console.Progress(len(plan))
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for result in pool.map(lambda c: _run(compressor, c, retry), plan):
            summary.states[result.state] += 1
            if result.state == CompressionState.FAILED:
                summary.failures.append(result.note)
            summary.bytes_before += result.bytes_before
            summary.bytes_after += result.bytes_after
            progress.step(summary.bytes_before - summary.bytes_after)
    summary.seconds = time.monotonic() - start
    saved = summary.bytes_before - summary.bytes_after
    ratio = summary.bytes_before / summary.bytes_after if summary.bytes_after else 1.0
    states = summary.states
    print(
        f"compressed {states[CompressionState.COMPRESSED]}, "
        f"derived lossy {states[CompressionState.DERIVED]}, kept {states[CompressionState.KEPT]}, "
        f"skipped {states[CompressionState.SKIPPED]}, failed {states[CompressionState.FAILED]} "
        f"in {summary.seconds:.1f} s; {summary.bytes_before / 2**20:.1f} MiB -> "
        f"{summary.bytes_after / 2**20:.1f} MiB (saved {saved / 2**20:.1f} MiB, x{ratio:.2f})"
        + (f"; failed: {console.reasons(summary.failures)}" if summary.failures else ""),
        file=out,
    )
    return summary
