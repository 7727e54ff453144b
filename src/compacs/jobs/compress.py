"""Compress one stored instance by the policy: the store's side of on-the-fly compression.

Objects are immutable: the encoded copy is written under a new key, the index switches
the instance to it in one transaction (only if the instance still references the object
that was encoded), and only then is the old object deleted. A crash at any point leaves
the instance referencing a whole object. A failure of any kind keeps the original, is
recorded on the instance (``compression`` = failed, with a note) and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from compacs import metrics
from compacs.clock import utc_now
from compacs.codecs.table import Codec, codec_for
from compacs.codecs.work import Encoding, Outcome
from compacs.failpoints import crash_point
from compacs.index import (
    Catalogue,
    CompressionQueue,
    Duplicates,
    IndexUnavailable,
    InstanceFacts,
    NewInstance,
    ObjectChange,
)
from compacs.index.compression_state import CompressionState
from compacs.index.schema import ARCHIVE_TIER, INGEST_TIER
from compacs.jobs.pool import Encoder, InProcess, PoolClosed, replay
from compacs.logs import about
from compacs.rules import Decision, Policy
from compacs.storage import BlobStore, FileStore, parse_key, storage_key
from compacs.storage.filesystem import intent

log = logging.getLogger(__name__)


class CompressionIndex(Catalogue, CompressionQueue, Protocol):
    """The roles of the index the compressor uses: the instance's row and its job."""


def settle_intents(store: BlobStore, index: Catalogue) -> int:
    """Start-up recovery of the steps a crash interrupted: each noted object, and every
    other object of the same instance beside it, that the index does not reference is
    deleted. Run before anything writes (no store or index step in flight). Returns how
    many objects were deleted."""
    if not isinstance(store, FileStore):
        return 0
    deleted = 0
    for note, keys in store.intents():
        for key in _same_instance(store, keys):
            parsed = parse_key(key)
            if parsed is None:  # not an object compacs named: never compacs's to delete
                continue
            location = index.locate(parsed[0])
            if (location is None or location.storage_key != key) and store.exists(key):
                store.delete(key)
                deleted += 1
        note.unlink(missing_ok=True)
    if deleted:
        log.warning("start-up recovery: deleted %d object(s) a crash left unreferenced", deleted)
    return deleted


def _same_instance(store: FileStore, keys: list[str]) -> set[str]:
    """``keys`` and the other objects of their instances in the same directories (a
    replaced original the crash left before its deletion)."""
    found = set(keys)
    for key in keys:
        folder, _, _ = key.rpartition("/")
        parsed = parse_key(key)
        if parsed is None:
            continue
        prefix = parsed[0] + "."
        path = store.local_path(key)
        if path is None or not path.parent.is_dir():
            continue
        for entry in path.parent.iterdir():
            if entry.name.startswith(prefix) and entry.name.endswith(".dcm"):
                found.add(f"{folder}/{entry.name}" if folder else entry.name)
    return found


JustWritten = tuple[str, bytes]
"""(storage key, bytes) of an object just written, still in memory."""


@dataclass(frozen=True)
class Result:
    state: str
    note: str
    bytes_before: int
    bytes_after: int
    transfer_syntax: str | None = None


class Compressor:
    """Claimed job -> switched index. The CPU part of a job runs in ``encoder``
    (:mod:`compacs.jobs.pool`: worker processes, or the calling thread by default); reading
    and writing the store and switching the index stay here, in the node's threads."""

    def __init__(
        self,
        store: BlobStore,
        index: CompressionIndex,
        policy: Policy,
        encoder: Encoder | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.policy = policy
        self.encoder: Encoder = encoder if encoder is not None else InProcess()

    def process(
        self,
        facts: InstanceFacts,
        reconsider: bool = False,
        written: JustWritten | None = None,
        tier: str = INGEST_TIER,
    ) -> Result:
        """Compress the instance described by ``facts`` (a claimed job or a candidate).

        ``reconsider`` (``compacs compress --retry``): an instance stored in one of several
        candidates of ``smallest`` is encoded with the others, and replaced only by a
        smaller encoding. ``written``: the object's bytes still in memory (policy
        ``when = "ingest"``), used if the instance still references them, instead of a
        second read of what was just written. ``tier`` :data:`ARCHIVE_TIER`: the archive
        tier's ``smallest`` instead of the rules (:meth:`Policy.archive_verdict`), the
        stored object counted as one of its candidates, and the tier recorded."""
        start = time.perf_counter()
        if tier == ARCHIVE_TIER:
            facts = {**facts, "job_tier": ARCHIVE_TIER}
        result = self._guarded(facts, lambda: self._process(facts, reconsider, written))
        metrics.CODEC_SECONDS.inc(time.perf_counter() - start)
        metrics.CODEC_RUNS.inc(result=result.state, syntax=result.transfer_syntax or "")
        return result

    def _guarded(self, facts: InstanceFacts, run: Callable[[], Result]) -> Result:
        try:
            with about(facts["sop_instance_uid"]):  # library messages name the instance
                result = run()
        except IndexUnavailable:  # not this object's failure: processed again later
            raise
        except PoolClosed:
            raise  # the node stops: the job stays claimed, queued again at the next start
        except Exception as exc:  # never let a codec or a file take the worker down
            log.exception("compression of %s failed", facts["sop_instance_uid"])
            result = Result(
                CompressionState.FAILED,
                f"{type(exc).__name__}: {exc}"[:500],
                facts["bytes_stored"],
                facts["bytes_stored"],
            )
            self._finish(facts, None, result)
        return result

    def _finish(self, facts: InstanceFacts, change: ObjectChange | None, result: Result) -> bool:
        state: str = result.state
        note: str | None = result.note
        tier: str | None = None
        if facts.get("job_tier") == ARCHIVE_TIER:
            tier = ARCHIVE_TIER  # the tier ran, whatever it found: not queued again
            previous = facts.get("compression")
            if change is None and previous is not None:
                # the ingest tier's outcome stands when the archive tier changed nothing
                state, note = previous, facts.get("compression_note")
                if result.state == CompressionState.FAILED:
                    log.warning("archive tier kept %s: %s", facts["sop_instance_uid"], result.note)
        finished = self.index.finish_job(
            facts["pk"], facts["storage_key"], change, state, note, tier
        )
        if change is None:  # the stored object stays: final now (a spool uploads it)
            self.store.settle(facts["storage_key"])
        return finished

    def _source(self, facts: InstanceFacts, written: JustWritten | None) -> bytes | str:
        """The stored object for the encoder: its path when the encoder runs in another
        process and the store has local files (the worker reads it; no copy through the
        pipe), else its bytes: those still in memory when they are the ones the instance
        references (the key names their SHA-256), or read from the store."""
        if self.encoder.remote and self._spool_dir() is not None:
            return str(self.store.local_path(facts["storage_key"]))
        if written is not None and written[0] == facts["storage_key"]:
            return written[1]
        return self.store.get(facts["storage_key"])

    def _spool_dir(self) -> str | None:
        """Where a worker process writes its encoding for :meth:`FileStore.adopt`, or
        None (the encoding comes back as bytes, for ``put``)."""
        return str(self.store.spool_dir) if isinstance(self.store, FileStore) else None

    def _place(self, key: str, encoded: Encoding) -> None:
        """Store the encoding under ``key``, durable on return: the worker's fsynced
        spool file renamed into place, or the bytes written."""
        if encoded.path:
            assert isinstance(self.store, FileStore)
            self.store.adopt(key, encoded.path)
        else:
            self.store.put(key, encoded.data)

    @contextmanager
    def _encode(
        self, source: bytes | str, codecs: tuple[Codec, ...], options: Any, lossy: bool
    ) -> Iterator[Encoding]:
        """The job's CPU part, wherever the encoder runs it; what the libraries logged and
        warned in a worker process is emitted here, naming the instance
        (:func:`compacs.logs.about`). A spooled encoding not placed by the end of the
        ``with`` block is removed."""
        spool_dir = self._spool_dir() if isinstance(source, str) else None
        encoding = self.encoder.encode(source, codecs, options, lossy, spool_dir)
        try:
            replay(encoding.messages)
            yield encoding
        finally:
            if encoding.path:
                Path(encoding.path).unlink(missing_ok=True)

    def _process(
        self, facts: InstanceFacts, reconsider: bool = False, written: JustWritten | None = None
    ) -> Result:
        planned = self.plan(facts, reconsider)
        if isinstance(planned, Result):
            self._finish(facts, None, planned)
            return planned
        decision, in_target = planned
        source = self._source(facts, written)
        with self._encode(source, decision.codecs, decision.options, decision.lossy) as encoding:
            return self._outcome(facts, encoding, decision, in_target)

    def plan(self, facts: InstanceFacts, reconsider: bool) -> Result | tuple[Decision, bool]:
        """What to encode the instance with, and whether its stored syntax is one of the
        targets (then only smaller counts); or the result without encoding. The archive
        tier (``job_tier``) always reconsiders: its ``smallest`` counts the stored object
        as a candidate."""
        before = int(facts["bytes_stored"])
        archive = facts.get("job_tier") == ARCHIVE_TIER
        decision = (self.policy.archive_verdict if archive else self.policy.verdict)(facts)
        if isinstance(decision, str):  # the policy keeps it as received, and says why
            return Result(CompressionState.SKIPPED, decision, before, before)
        reconsider = reconsider or archive
        stored = facts["transfer_syntax_stored"]
        in_target = stored in decision.targets
        if in_target and not (reconsider and len(decision.codecs) > 1):
            return Result(CompressionState.KEPT, "already in a target syntax", before, before)
        if in_target:  # smallest, reconsidered: the stored object is one of the candidates
            others = tuple(c for c in decision.codecs if c.transfer_syntax != stored)
            decision = replace(decision, codecs=others)
        return decision, in_target

    def trial(self, facts: InstanceFacts) -> Result:
        """What the archive tier would make of the instance, encoded and verified but not
        written (``compacs compress --archive --dry-run``): the size of the smallest
        candidate, or the stored size when nothing is smaller."""
        facts = {**facts, "job_tier": ARCHIVE_TIER}
        planned = self.plan(facts, reconsider=True)
        if isinstance(planned, Result):
            return planned
        decision, _ = planned
        before = int(facts["bytes_stored"])
        source = self._source(facts, None)
        with self._encode(source, decision.codecs, decision.options, False) as encoding:
            if encoding.outcome is not Outcome.ENCODED:
                return Result(CompressionState.SKIPPED, encoding.note, before, before)
            if encoding.size >= before:
                note = f"{encoding.codec} gave {encoding.size} bytes, not smaller"
                return Result(
                    CompressionState.KEPT, note, before, before, facts["transfer_syntax_stored"]
                )
            return Result(
                CompressionState.COMPRESSED,
                encoding.codec,
                before,
                encoding.size,
                encoding.transfer_syntax,
            )

    def _outcome(
        self, facts: InstanceFacts, encoding: Encoding, decision: Decision, in_target: bool
    ) -> Result:
        """Record what the encoder made of the instance: switch, derive, keep, or fail."""
        before = int(facts["bytes_stored"])
        if encoding.outcome in (Outcome.NOT_COMPRESSIBLE, Outcome.REFUSED):
            result = Result(CompressionState.SKIPPED, encoding.note, before, before)
            self._finish(facts, None, result)
            return result
        if encoding.outcome is Outcome.FAILED:
            result = Result(CompressionState.FAILED, encoding.note, before, before)
            log.warning("could not compress %s: %s", facts["sop_instance_uid"], result.note)
            self._finish(facts, None, result)
            return result
        if decision.lossy:
            return self._store_derived(facts, before, encoding, decision)
        if (self.policy.require_smaller or in_target) and encoding.size >= before:
            note = f"{encoding.codec} gave {encoding.size} bytes, not smaller"
            if in_target:
                tried = ", ".join(c.name for c in decision.codecs)
                note = f"stored syntax stays the smallest (tried {tried}): {note}"
            result = Result(CompressionState.KEPT, note, before, before)
            self._finish(facts, None, result)
            return result

        return self._switch(facts, encoding, encoding.codec)

    def _switch(self, facts: InstanceFacts, encoded: Encoding, note: str) -> Result:
        """Store ``encoded`` under a new key and switch the instance to it."""
        before = int(facts["bytes_stored"])
        digest = encoded.sha256  # hashed once, where the bytes were made
        key = storage_key(
            facts["study_uid"], facts["series_uid"], facts["sop_instance_uid"], digest
        )
        change = ObjectChange(key, encoded.transfer_syntax, encoded.size, digest)
        result = Result(
            CompressionState.COMPRESSED, note, before, encoded.size, encoded.transfer_syntax
        )
        with intent(self.store, [facts["storage_key"], key]):
            self._place(key, encoded)
            crash_point("compressed-placed")
            if key == facts["storage_key"]:  # the same bytes again: nothing to switch
                self._finish(facts, None, result)
            elif self._finish(facts, change, result):
                crash_point("compressed-switched")
                self.store.delete(facts["storage_key"])
            else:  # replaced or deleted meanwhile: the new object belongs to nobody
                self.store.delete(key)
                result = Result(
                    CompressionState.SKIPPED,
                    "instance changed while it was compressed",
                    before,
                    before,
                )
        return result

    def reencode(self, facts: InstanceFacts, reason: str) -> Result:
        """Re-encode a stored JPEG-LS object that other decoders misread (``reason``) as
        JPEG-LS Lossless with P = Bits Stored, the values kept: the source frames are
        sign-extended at Bits Stored, which restores the old streams' masked samples."""

        def run() -> Result:
            source = self._source(facts, None)
            with self._encode(source, (codec_for("jpeg-ls"),), {}, False) as encoding:
                if encoding.outcome is not Outcome.ENCODED:
                    before = int(facts["bytes_stored"])
                    result = Result(CompressionState.FAILED, encoding.note, before, before)
                    self._finish(facts, None, result)
                    return result
                return self._switch(facts, encoding, f"jpeg-ls re-encoded: {reason}"[:500])

        return self._guarded(facts, run)

    def _store_derived(
        self, facts: InstanceFacts, before: int, encoded: Encoding, decision: Decision
    ) -> Result:
        """Store the lossy derivative as a new instance (new SOP Instance UID); keep or drop
        the original as the rule says. Only a rule with ``lossy = true`` gets here."""
        key = storage_key(facts["study_uid"], facts["series_uid"], encoded.new_uid, encoded.sha256)
        with intent(self.store, [key, facts["storage_key"]]):
            return self._derived(facts, before, encoded, decision, key)

    def _derived(
        self, facts: InstanceFacts, before: int, encoded: Encoding, decision: Decision, key: str
    ) -> Result:
        """:meth:`_store_derived` once its intent is noted."""
        new_uid, digest = encoded.new_uid, encoded.sha256
        assert encoded.attributes is not None  # the worker extracts them with the encoding
        self._place(key, encoded)
        instance = NewInstance(
            attributes=encoded.attributes,
            storage_key=key,
            transfer_syntax=encoded.transfer_syntax,
            bytes_received=before,  # what the original took: the saving shows in stats
            bytes_stored=encoded.size,
            sha256=digest,
            calling_ae=facts["calling_ae"],
            called_ae=facts["called_ae"],
            received_at=utc_now(),
        )
        try:
            self.index.add_instance(instance, Duplicates.KEEP_FIRST)
        except Exception:
            self.store.delete(key)
            raise
        note = f"lossy derivative {new_uid} ({encoded.codec})"
        if decision.keep_original:
            result = Result(
                CompressionState.DERIVED, note, before, before, facts["transfer_syntax_stored"]
            )
            self._finish(facts, None, result)
        else:
            old_key = self.index.delete_instance(facts["pk"])
            if old_key:
                self.store.delete(old_key)
            result = Result(
                CompressionState.DERIVED,
                note + "; original deleted",
                before,
                encoded.size,
                encoded.transfer_syntax,
            )
        log.info("%s: %s", facts["sop_instance_uid"], result.note)
        return result
