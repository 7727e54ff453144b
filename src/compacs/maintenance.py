"""``compacs compress``: apply the current policy to what is already stored."""

from __future__ import annotations

import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from typing import NamedTuple, TextIO

from pydicom import dcmread

from compacs.codecs.streams import JPEG_LS_SYNTAXES, first_fragment, jls_misread_reason
from compacs.index import Index, InstanceFacts
from compacs.jobs.compress import (
    COMPRESSED,
    DERIVED,
    FAILED,
    KEPT,
    SKIPPED,
    Compressor,
    Result,
)
from compacs.rules import Policy
from compacs.storage import BlobStore

REPAIR = "jpeg-ls (repair)"


class Candidate(NamedTuple):
    facts: InstanceFacts
    target: str
    """A codec name, "smallest", or :data:`REPAIR`."""
    reason: str = ""


def candidates(
    index: Index, policy: Policy, retry: bool, store: BlobStore | None = None
) -> list[Candidate]:
    """Instances the policy would change, each with the name of its target; with ``store``,
    also the JPEG-LS objects other decoders misread (see :func:`misread_reason`), whatever
    the policy says: they are re-encoded in JPEG-LS, values kept."""
    out = []
    for facts in index.instances():
        target = _policy_target(facts, policy, retry)
        if target is not None:
            out.append(Candidate(facts, target))
        elif store is not None and (reason := misread_reason(facts, store)):
            out.append(Candidate(facts, REPAIR, reason))
    return out


def _policy_target(facts: InstanceFacts, policy: Policy, retry: bool) -> str | None:
    if facts.get("compression") == DERIVED:
        return None  # its lossy derivative exists; the original is kept on purpose
    if facts.get("compression") in (FAILED, SKIPPED, KEPT) and not retry:
        return None
    decision = policy.decide(facts)
    if decision is None or facts["transfer_syntax_stored"] in decision.targets:
        return None
    return decision.codecs[0].name if len(decision.codecs) == 1 else "smallest"


def misread_reason(facts: InstanceFacts, store: BlobStore) -> str | None:
    """Why the stored JPEG-LS object decodes wrong in other decoders, or None. Only signed
    pixels with Bits Stored < Bits Allocated can be affected; only those are read."""
    syntax = str(facts.get("transfer_syntax_stored"))
    bits_allocated = int(facts.get("bits_allocated") or 0)
    bits_stored = int(facts.get("bits_stored") or 0)
    signed = facts.get("pixel_representation") == 1
    if syntax not in JPEG_LS_SYNTAXES or not signed or not 0 < bits_stored < bits_allocated:
        return None
    ds = dcmread(BytesIO(store.get(facts["storage_key"])))
    fragment = first_fragment(ds.PixelData) if "PixelData" in ds else b""
    return jls_misread_reason(syntax, bits_allocated, bits_stored, signed, fragment)


class Progress:
    """A one-line progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.start = time.monotonic()
        self.tty = stream.isatty()
        self._last = 0.0

    def step(self, saved: int | None = None, note: str = "") -> None:
        """One more done; ``saved`` bytes (compress) or a short ``note`` (verify, reindex)."""
        self.done += 1
        now = time.monotonic()
        if not self.tty and now - self._last < 2 and self.done != self.total:
            return
        self._last = now
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        rate = self.done / max(now - self.start, 1e-9)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {rate:.0f}/s"
        if saved is not None:
            line += f" saved {saved / 2**20:.1f} MiB"
        if note:
            line += f" {note}"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        if self.tty and self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


@dataclass
class Summary:
    planned: int = 0
    states: Counter = field(default_factory=Counter)
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0


def _run(compressor: Compressor, candidate: Candidate) -> Result:
    if candidate.target == REPAIR:
        return compressor.reencode(candidate.facts, candidate.reason)
    return compressor.process(candidate.facts)


def compress_stored(
    compressor: Compressor,
    index: Index,
    policy: Policy,
    *,
    workers: int,
    retry: bool,
    dry_run: bool,
    out: TextIO = sys.stdout,
) -> Summary:
    plan = candidates(index, policy, retry, compressor.store)
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
    if dry_run or not plan:
        return summary
    progress = Progress(len(plan))
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for result in pool.map(lambda c: _run(compressor, c), plan):
            summary.states[result.state] += 1
            summary.bytes_before += result.bytes_before
            summary.bytes_after += result.bytes_after
            progress.step(summary.bytes_before - summary.bytes_after)
    summary.seconds = time.monotonic() - start
    saved = summary.bytes_before - summary.bytes_after
    ratio = summary.bytes_before / summary.bytes_after if summary.bytes_after else 1.0
    print(
        f"compressed {summary.states[COMPRESSED]}, derived lossy {summary.states[DERIVED]}, "
        f"kept {summary.states[KEPT]}, "
        f"skipped {summary.states[SKIPPED]}, failed {summary.states[FAILED]} "
        f"in {summary.seconds:.1f} s; {summary.bytes_before / 2**20:.1f} MiB -> "
        f"{summary.bytes_after / 2**20:.1f} MiB (saved {saved / 2**20:.1f} MiB, x{ratio:.2f})",
        file=out,
    )
    return summary
