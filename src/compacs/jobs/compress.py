"""Compress one stored instance by the policy: the store's side of on-the-fly compression.

Objects are immutable: the encoded copy is written under a new key, the index switches
the instance to it in one transaction (only if the instance still references the object
that was encoded), and only then is the old object deleted. A crash at any point leaves
the instance referencing a whole object. A failure of any kind keeps the original, is
recorded on the instance (``compression`` = failed, with a note) and logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from compacs import metrics
from compacs.codecs.lossy import DerivationRefused, derive
from compacs.codecs.pixels import NotCompressible
from compacs.codecs.table import CodecUnavailable, codec_for
from compacs.codecs.transcode import Transcoded, transcode
from compacs.dicom.attributes import extract
from compacs.index import (
    Duplicates,
    Index,
    IndexUnavailable,
    InstanceFacts,
    NewInstance,
    ObjectChange,
)
from compacs.index.compression_state import (
    COMPRESSED,
    DERIVED,
    FAILED,
    KEPT,
    SKIPPED,
)
from compacs.index.sql import utc_now
from compacs.ingest import storage_key
from compacs.logs import about
from compacs.rules import Decision, Policy
from compacs.storage import BlobStore

log = logging.getLogger(__name__)


def read_header(data: bytes) -> Dataset:
    return dcmread(BytesIO(data), stop_before_pixels=True)


@dataclass(frozen=True)
class Result:
    state: str
    note: str
    bytes_before: int
    bytes_after: int
    transfer_syntax: str | None = None


class Compressor:
    def __init__(self, store: BlobStore, index: Index, policy: Policy) -> None:
        self.store = store
        self.index = index
        self.policy = policy

    def process(self, facts: InstanceFacts, reconsider: bool = False) -> Result:
        """Compress the instance described by ``facts`` (a claimed job or a candidate).

        ``reconsider`` (``compacs compress --retry``): an instance stored in one of several
        candidates of ``smallest`` is encoded with the others, and replaced only by a
        smaller encoding."""
        start = time.perf_counter()
        result = self._process_safely(facts, reconsider)
        metrics.CODEC_SECONDS.inc(time.perf_counter() - start)
        metrics.CODEC_RUNS.inc(result=result.state, syntax=result.transfer_syntax or "")
        return result

    def _process_safely(self, facts: InstanceFacts, reconsider: bool) -> Result:
        return self._guarded(facts, lambda: self._process(facts, reconsider))

    def _guarded(self, facts: InstanceFacts, run: Callable[[], Result]) -> Result:
        try:
            with about(facts["sop_instance_uid"]):  # library messages name the instance
                result = run()
        except IndexUnavailable:  # not this object's failure: processed again later
            raise
        except Exception as exc:  # never let a codec or a file take the worker down
            log.exception("compression of %s failed", facts["sop_instance_uid"])
            result = Result(
                FAILED,
                f"{type(exc).__name__}: {exc}"[:500],
                facts["bytes_stored"],
                facts["bytes_stored"],
            )
            self._finish(facts, None, result)
        return result

    def _finish(self, facts: InstanceFacts, change: ObjectChange | None, result: Result) -> bool:
        return self.index.finish_job(
            facts["pk"], facts["storage_key"], change, result.state, result.note
        )

    def _process(self, facts: InstanceFacts, reconsider: bool = False) -> Result:
        before = int(facts["bytes_stored"])
        decision = self.policy.verdict(facts)
        if isinstance(decision, str):  # the policy keeps it as received, and says why
            result = Result(SKIPPED, decision, before, before)
            self._finish(facts, None, result)
            return result
        stored = facts["transfer_syntax_stored"]
        in_target = stored in decision.targets
        if in_target and not (reconsider and len(decision.codecs) > 1):
            result = Result(KEPT, "already in a target syntax", before, before)
            self._finish(facts, None, result)
            return result
        if in_target:  # smallest, reconsidered: the stored object is one of the candidates
            others = tuple(c for c in decision.codecs if c.transfer_syntax != stored)
            decision = replace(decision, codecs=others)
        data = self.store.get(facts["storage_key"])
        if decision.lossy:
            return self._derive_lossy(facts, data, decision)
        best, errors = self._encode(data, decision)
        if isinstance(best, Result):  # not compressible at all
            self._finish(facts, None, best)
            return best
        if best is None:
            result = Result(FAILED, "; ".join(errors)[:500], before, before)
            log.warning("could not compress %s: %s", facts["sop_instance_uid"], result.note)
            self._finish(facts, None, result)
            return result
        if (self.policy.require_smaller or in_target) and len(best.data) >= len(data):
            note = f"{best.codec.name} gave {len(best.data)} bytes, not smaller"
            if in_target:
                tried = ", ".join(c.name for c in decision.codecs)
                note = f"stored syntax stays the smallest (tried {tried}): {note}"
            result = Result(KEPT, note, before, before)
            self._finish(facts, None, result)
            return result

        return self._switch(facts, best, best.codec.name)

    def _switch(self, facts: InstanceFacts, encoded: Transcoded, note: str) -> Result:
        """Store ``encoded`` under a new key and switch the instance to it."""
        before = int(facts["bytes_stored"])
        digest = hashlib.sha256(encoded.data).hexdigest()
        key = storage_key(
            facts["study_uid"], facts["series_uid"], facts["sop_instance_uid"], digest
        )
        self.store.put(key, encoded.data)
        change = ObjectChange(key, encoded.transfer_syntax, len(encoded.data), digest)
        result = Result(COMPRESSED, note, before, len(encoded.data), encoded.transfer_syntax)
        if self._finish(facts, change, result):
            self.store.delete(facts["storage_key"])
        else:  # replaced or deleted meanwhile: the new object belongs to nobody
            self.store.delete(key)
            result = Result(SKIPPED, "instance changed while it was compressed", before, before)
        return result

    def reencode(self, facts: InstanceFacts, reason: str) -> Result:
        """Re-encode a stored JPEG-LS object that other decoders misread (``reason``) as
        JPEG-LS Lossless with P = Bits Stored, the values kept: the source frames are
        sign-extended at Bits Stored, which restores the old streams' masked samples."""

        def run() -> Result:
            data = self.store.get(facts["storage_key"])
            encoded = transcode(data, codec_for("jpeg-ls"))
            return self._switch(facts, encoded, f"jpeg-ls re-encoded: {reason}"[:500])

        return self._guarded(facts, run)

    def _derive_lossy(self, facts: InstanceFacts, data: bytes, decision: Decision) -> Result:
        """Store the lossy derivative as a new instance (new SOP Instance UID); keep or drop
        the original as the rule says. Only a rule with ``lossy = true`` gets here."""
        before = len(data)
        errors: list[str] = []
        best: tuple[Transcoded, str] | None = None
        for codec in decision.codecs:
            try:
                candidate = derive(data, codec, dict(decision.options))
            except DerivationRefused as exc:
                result = Result(SKIPPED, str(exc), before, before)
                self._finish(facts, None, result)
                return result
            except NotCompressible as exc:
                result = Result(SKIPPED, f"not compressible: {exc}", before, before)
                self._finish(facts, None, result)
                return result
            except Exception as exc:
                errors.append(f"{codec.name}: {type(exc).__name__}: {exc}")
                continue
            if best is None or len(candidate[0].data) < len(best[0].data):
                best = candidate
        if best is None:
            result = Result(FAILED, "; ".join(errors)[:500], before, before)
            self._finish(facts, None, result)
            return result
        encoded, new_uid = best
        digest = hashlib.sha256(encoded.data).hexdigest()
        key = storage_key(facts["study_uid"], facts["series_uid"], new_uid, digest)
        derived = read_header(encoded.data)
        self.store.put(key, encoded.data)
        instance = NewInstance(
            attributes=extract(derived),
            storage_key=key,
            transfer_syntax=encoded.transfer_syntax,
            bytes_received=before,  # what the original took: the saving shows in stats
            bytes_stored=len(encoded.data),
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
        note = f"lossy derivative {new_uid} ({encoded.codec.name})"
        if decision.keep_original:
            result = Result(DERIVED, note, before, before, facts["transfer_syntax_stored"])
            self._finish(facts, None, result)
        else:
            old_key = self.index.delete_instance(facts["pk"])
            if old_key:
                self.store.delete(old_key)
            result = Result(
                DERIVED,
                note + "; original deleted",
                before,
                len(encoded.data),
                encoded.transfer_syntax,
            )
        log.info("%s: %s", facts["sop_instance_uid"], result.note)
        return result

    def _encode(self, data: bytes, decision: Decision) -> tuple[Any, list[str]]:
        """The smallest verified encoding among the decision's codecs."""
        best: Transcoded | None = None
        errors: list[str] = []
        for codec in decision.codecs:
            try:
                encoded = transcode(data, codec, dict(decision.options))
            except NotCompressible as exc:
                before = len(data)
                return Result(SKIPPED, f"not compressible: {exc}", before, before), errors
            except CodecUnavailable as exc:
                errors.append(f"{codec.name}: {exc}")
                continue
            except Exception as exc:
                errors.append(f"{codec.name}: {type(exc).__name__}: {exc}")
                log.warning("%s failed: %s", codec.name, exc)
                continue
            if best is None or len(encoded.data) < len(best.data):
                best = encoded
        return best, errors
