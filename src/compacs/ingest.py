"""Received bytes -> checks -> durable object -> committed index row -> DICOM status.

This is the whole C-STORE path; the network handler only calls :meth:`Ingest.receive`.
Success is returned only after the object is durable and its index row committed
(PS3.4 B.2.3); every failure answers with a status and an Error Comment and leaves
neither an object nor a row behind.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread

from compacs.clock import utc_now
from compacs.dicom.attributes import IMAGE, SERIES, STUDY, extract
from compacs.dicom.part10 import TooLarge, file_header, joined, structure_problem
from compacs.dicom.status import Status
from compacs.dicom.uids import InvalidUID, require_uid
from compacs.failpoints import crash_point
from compacs.index import Catalogue, Duplicates, IndexUnavailable, NewInstance
from compacs.routing import Routing
from compacs.rules import DEFAULT_POLICY, Policy, When, facts_of
from compacs.storage import BlobStore, FileStore, StorageFull, storage_key
from compacs.storage.filesystem import intent

RECEIVING_PAUSE = 0.25
"""Seconds without a C-STORE after which the node counts as no longer receiving
(:meth:`Ingest.receiving`): longer than the gaps between one sender's requests."""

STAGING_THREADS = 4
"""Helper threads writing received objects (:meth:`Ingest._stage`); more concurrent
C-STOREs than this wait for one, never longer than a write."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    """One C-STORE request as it came off the association."""

    dataset: bytes
    """The encoded data set exactly as sent, without File Meta Information."""
    transfer_syntax: str
    """The accepted presentation context's transfer syntax."""
    sop_class_uid: str
    """Affected SOP Class UID of the request."""
    sop_instance_uid: str
    """Affected SOP Instance UID of the request."""
    calling_ae: str
    called_ae: str


@dataclass(frozen=True)
class Outcome:
    status: int
    comment: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.SUCCESS


def sha256_hex(parts: tuple[bytes, ...]) -> str:
    """Hex SHA-256 of the bytes of ``parts`` one after the other."""
    sha256 = hashlib.sha256()
    for part in parts:
        sha256.update(part)
    return sha256.hexdigest()


class Rejected(Exception):
    def __init__(self, status: Status, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


class Ingest:
    def __init__(
        self,
        store: BlobStore,
        index: Catalogue,
        duplicates: Duplicates,
        policy: Policy = DEFAULT_POLICY,
        *,
        routing: Routing | None = None,
        max_object_size: int = 2**31,
        compress_now: Callable[[str, str, bytes], object] | None = None,
        queued: Callable[[], None] | None = None,
        forward_queued: Callable[[], None] | None = None,
    ) -> None:
        """``compress_now(sop_instance_uid, storage_key, data)`` compresses before the
        response (policy ``when = "ingest"``), from the bytes still in memory; ``queued()``
        tells the workers a job is waiting; ``forward_queued()`` tells the forwarders a
        delivery is waiting."""
        self.store = store
        self.index = index
        self.duplicates = duplicates
        self.policy = policy
        self.routing = routing or Routing()
        self.max_object_size = max_object_size
        self.compress_now = compress_now
        self.queued = queued
        self.forward_queued = forward_queued
        self._in_flight = 0
        self._last_end = -math.inf
        self._closing = False
        self._idle = threading.Condition()
        # writes objects while the receiving threads parse and hash them (_stage)
        self._stager = (
            ThreadPoolExecutor(STAGING_THREADS, thread_name_prefix="ingest-stage")
            if isinstance(store, FileStore)
            else None
        )

    # -- shutdown support -----------------------------------------------------------------
    def close(self, timeout: float) -> bool:
        """Refuse new stores (0xA700) and wait until none is half-way; True when idle."""
        with self._idle:
            self._closing = True
            idle = self._idle.wait_for(lambda: self._in_flight == 0, timeout)
        if idle and self._stager is not None:
            self._stager.shutdown(wait=False)
        return idle

    def receiving(self) -> bool:
        """True while a C-STORE is in progress or one ended within RECEIVING_PAUSE."""
        return self._in_flight > 0 or time.monotonic() - self._last_end < RECEIVING_PAUSE

    def receive(self, rx: Received) -> Outcome:
        with self._idle:
            if self._closing:
                return Outcome(Status.OUT_OF_RESOURCES, "node is shutting down; send again later")
            self._in_flight += 1
        try:
            return self._receive(rx)
        except Rejected as exc:
            log.warning(
                "C-STORE from %s refused (0x%04X): %s", rx.calling_ae, exc.status, exc.comment
            )
            return Outcome(exc.status, exc.comment)
        except Exception as exc:  # the server keeps serving whatever happens here
            log.exception("C-STORE from %s failed unexpectedly", rx.calling_ae)
            return Outcome(Status.PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
        finally:
            with self._idle:
                self._in_flight -= 1
                self._last_end = time.monotonic()
                self._idle.notify_all()

    def _receive(self, rx: Received) -> Outcome:
        header = self._whole(rx)
        parts = (header, rx.dataset)
        staged = self._stage(parts)
        # hashed here, first: hashlib lets go of the GIL, and the staging thread takes it
        # to start its write (a helper thread woke too late to hash beside the parse)
        digest = sha256_hex(parts)
        try:
            return self._indexed(rx, parts, staged, digest)
        finally:
            if staged is not None:
                _discard_staged(staged)

    def _stage(self, parts: tuple[bytes, bytes]) -> Future[Path] | None:
        """Start writing and syncing the object (:meth:`FileStore.stage`) on a helper
        thread while this one hashes and parses it (the writes wait without the GIL:
        the C-STORE response comes about a millisecond sooner); None for other stores."""
        if self._stager is None:
            return None
        assert isinstance(self.store, FileStore)
        return self._stager.submit(self.store.stage, parts)

    def _indexed(
        self, rx: Received, parts: tuple[bytes, bytes], staged: Future[Path] | None, digest: str
    ) -> Outcome:
        attributes = self._attributes(rx, parts[0])
        sop_instance = attributes[IMAGE]["sop_instance_uid"]
        if self.duplicates is Duplicates.KEEP_FIRST and self._known(sop_instance):
            log.info("duplicate %s from %s: kept the stored copy", sop_instance, rx.calling_ae)
            return Outcome(Status.SUCCESS)

        key = storage_key(
            attributes[STUDY]["study_uid"], attributes[SERIES]["series_uid"], sop_instance, digest
        )
        with intent(self.store, [key]):  # a crash before the commit leaves no orphan
            return self._store(rx, attributes, parts, key, digest, staged)

    def _put(
        self, key: str, parts: tuple[bytes, bytes], staged: Future[Path] | None, settled: bool
    ) -> None:
        """The object durable under ``key``: the staged file renamed into place, or put
        (``settled`` False: to be compressed soon, which a spooled store waits for)."""
        try:
            if staged is None:
                self.store.put(key, parts, settled=settled)
            else:
                assert isinstance(self.store, FileStore)
                written = staged.result()
                crash_point("received-staged")  # durability tests (compacs.failpoints)
                self.store.adopt(key, written)
        except StorageFull as exc:
            raise Rejected(Status.OUT_OF_RESOURCES, f"storage full: {exc.strerror}") from None
        except OSError as exc:
            raise Rejected(Status.OUT_OF_RESOURCES, f"storage write failed: {exc}") from None

    def _store(
        self,
        rx: Received,
        attributes: dict[str, dict[str, Any]],
        parts: tuple[bytes, bytes],
        key: str,
        digest: str,
        staged: Future[Path] | None,
    ) -> Outcome:
        """Durable object, then committed index row (PS3.4 B.2.3), then the follow-ups."""
        sop_instance = attributes[IMAGE]["sop_instance_uid"]
        size = sum(len(part) for part in parts)
        facts = self._facts(rx, attributes)
        due, kept_because = self._compression_due(facts)
        self._put(key, parts, staged, settled=due is None)
        crash_point("received-placed")  # durability tests (compacs.failpoints)

        forwards = self.routing.forwards_for(facts)
        instance = NewInstance(
            attributes=attributes,
            storage_key=key,
            transfer_syntax=rx.transfer_syntax,
            bytes_received=size,
            bytes_stored=size,
            sha256=digest,
            calling_ae=rx.calling_ae,
            called_ae=rx.called_ae,
            received_at=utc_now(),
            compress_after=due,
            forwards=forwards,
            compression_note=kept_because,
        )
        try:
            result = self.index.add_instance(instance, self.duplicates)
        except IndexUnavailable as exc:
            self._discard(key)
            raise Rejected(Status.OUT_OF_RESOURCES, str(exc)) from None
        except BaseException:
            self._discard(key)
            raise
        if result.obsolete_key:
            self._discard(result.obsolete_key)
        if not result.added:
            log.info("duplicate %s from %s: kept the stored copy", sop_instance, rx.calling_ae)
            self.store.forget(key)
        elif due is not None:
            self._compress(sop_instance, key, parts)
        if result.added and forwards and self.forward_queued is not None:
            self.forward_queued()
        return Outcome(Status.SUCCESS)

    def _known(self, sop_instance: str) -> bool:
        try:
            return self.index.locate(sop_instance) is not None
        except IndexUnavailable as exc:
            raise Rejected(Status.OUT_OF_RESOURCES, str(exc)) from None

    def _whole(self, rx: Received) -> bytes:
        """The File Meta header to store the data set under, once the request's UIDs are
        valid and the data set holds together (every element inside what was received);
        or Rejected. The header and the data set are never joined: that would copy the
        whole data set once more (a 256 MiB data set cost twice its size)."""
        try:
            sop_class = require_uid(rx.sop_class_uid, "Affected SOP Class UID (0000,0002)")
            sop_instance = require_uid(rx.sop_instance_uid, "Affected SOP Instance UID (0000,1000)")
        except InvalidUID as exc:
            raise Rejected(Status.INVALID_UID, str(exc)) from None
        try:
            problem = structure_problem(rx.dataset, 0, rx.transfer_syntax, self.max_object_size)
        except TooLarge as exc:
            raise Rejected(Status.OUT_OF_RESOURCES, f"{exc} ([ingest] max_object_size)") from None
        if problem:
            raise Rejected(Status.CANNOT_UNDERSTAND, f"malformed data set: {problem}")
        return file_header(sop_class, sop_instance, rx.transfer_syntax, rx.calling_ae)

    def _attributes(self, rx: Received, header: bytes) -> dict[str, dict[str, Any]]:
        """The indexed attributes of the data set (its one parse), agreeing with the
        request's UIDs (PS3.4 B.2.3); or Rejected."""
        try:
            ds = dcmread(joined(header, rx.dataset), stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types on odd input
            raise Rejected(Status.CANNOT_UNDERSTAND, f"data set cannot be parsed: {exc}") from None

        try:
            attributes = extract(ds)
        except InvalidUID as exc:
            raise Rejected(Status.INVALID_UID, str(exc)) from None
        except Exception as exc:  # pydicom decodes values lazily: an unknown VR fails here
            raise Rejected(
                Status.CANNOT_UNDERSTAND, f"data set cannot be parsed: {type(exc).__name__}: {exc}"
            ) from None
        image = attributes[IMAGE]
        if image["sop_instance_uid"] != rx.sop_instance_uid:
            raise Rejected(
                Status.DATASET_MISMATCH,
                "SOP Instance UID (0008,0018) differs from the request's Affected SOP "
                "Instance UID (PS3.4 B.2.3)",
            )
        if image["sop_class_uid"] != rx.sop_class_uid:
            raise Rejected(
                Status.DATASET_MISMATCH,
                "SOP Class UID (0008,0016) differs from the request's Affected SOP Class UID",
            )
        return attributes

    @staticmethod
    def _facts(rx: Received, attributes: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """What compression and routing rules match on: every indexed attribute, and the
        association's facts (compacs.rules.MATCH_KEYS)."""
        facts = {column: value for level in attributes.values() for column, value in level.items()}
        facts.update(calling_ae=rx.calling_ae, called_ae=rx.called_ae)
        facts["transfer_syntax_received"] = rx.transfer_syntax
        return facts

    def _compression_due(self, facts: dict[str, Any]) -> tuple[float | None, str | None]:
        """When the policy wants this instance compressed (epoch seconds) and None, or
        None and why the policy keeps it as received."""
        verdict = self.policy.verdict(facts_of(facts))
        if isinstance(verdict, str):
            return None, verdict
        # at ingest the handler compresses at once; the queued job is only the safety net
        # for a crash in between, so the workers leave it alone for a while
        return time.time() + (self.policy.delay if self.policy.when is When.DEFERRED else 60), None

    def _compress(self, sop_instance: str, key: str, parts: tuple[bytes, bytes]) -> None:
        """Compress now (policy 'ingest') or wake the workers; never fails the store:
        the original is durable and indexed, and its job stays queued on any error. The
        encoder gets the object's bytes from memory (one buffer: it goes to a worker
        process), not read back from the store."""
        if self.policy.when is When.INGEST and self.compress_now is not None:
            try:
                self.compress_now(sop_instance, key, b"".join(parts))
            except Exception:
                log.exception("compression at ingest of %s failed; stays queued", sop_instance)
        elif self.queued is not None:
            self.queued()

    def _discard(self, key: str) -> None:
        try:
            self.store.delete(key)
        except OSError:
            log.exception("could not delete unreferenced object %s", key)


def _discard_staged(staged: Future[Path]) -> None:
    """Once the staging write is over, remove its file unless it was adopted (renamed
    into place) or never made."""
    try:
        path = staged.result()
    except Exception:
        return  # nothing was left: stage() removes its file on error
    path.unlink(missing_ok=True)
