"""The index interface and the records that cross it."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NotRequired, Protocol, TypedDict

from compacs.index.forward_state import ForwardState

if TYPE_CHECKING:
    from compacs.query import Query


class Duplicates(StrEnum):
    """What a second C-STORE of a known SOP Instance UID does (one copy, one row, always)."""

    KEEP_FIRST = "keep-first"
    """The stored copy stays; the new one is acknowledged and discarded (Orthanc's default)."""
    REPLACE = "replace"
    """The new copy replaces the stored one (index row and object, atomically)."""


class IndexUnavailable(RuntimeError):
    """The index could not commit (disk full, database gone); senders get 0xA700."""


@dataclass(frozen=True)
class Forward:
    """A pending delivery of an instance to a destination (the gateway's queue item)."""

    destination: str
    """``AET@HOST:PORT``."""
    syntaxes: tuple[str, ...]
    """Transfer syntaxes to offer, most preferred first; ``stored`` is the stored one."""
    wait_compression: bool = False
    """Send only once the instance's compression job is done."""
    commit: bool = False
    """Done only when the destination confirms Storage Commitment (PS3.4 Annex J)."""
    lossy: bool = False
    codec_options: dict[str, Any] = field(default_factory=dict)
    retain_days: float | None = None
    """Delete the local copy once delivered (committed) and this old; None keeps it."""


@dataclass(frozen=True)
class Selected:
    """An instance an admin command picked by UID (``--study``, ``--series``, ...)."""

    pk: int
    sop_instance_uid: str
    study_uid: str
    bytes_stored: int


@dataclass(frozen=True)
class NewInstance:
    """An instance whose object is durable in the blob store, ready to be indexed."""

    attributes: dict[str, dict[str, Any]]
    """Indexed attributes per level, from :func:`compacs.dicom.attributes.extract`."""
    storage_key: str
    transfer_syntax: str
    bytes_received: int
    bytes_stored: int
    sha256: str
    calling_ae: str
    called_ae: str
    received_at: str
    """ISO 8601 UTC time of receipt."""
    compress_after: float | None = None
    """Epoch seconds after which the instance is due for compression (a job is queued in
    the same transaction), or None when the policy keeps it as received."""
    forwards: tuple[Forward, ...] = ()
    """Deliveries queued in the same transaction (routing rules, ``--forward``)."""
    compression_note: str | None = None
    """Why the policy keeps it as received (:meth:`compacs.rules.Policy.verdict`), when
    it does: recorded with the instance, whose compression state stays empty."""

    @property
    def sop_instance_uid(self) -> str:
        uid: str = self.attributes["IMAGE"]["sop_instance_uid"]  # the attributes' values: Any
        return uid


@dataclass(frozen=True)
class AddResult:
    added: bool
    """True when this call created or replaced the row, False for a kept duplicate."""
    obsolete_key: str | None = None
    """An object no row references any more: the caller deletes it after the commit."""


@dataclass(frozen=True)
class InstanceLocation:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    storage_key: str
    transfer_syntax_received: str
    transfer_syntax_stored: str
    bytes_received: int
    bytes_stored: int
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectChange:
    """A new object for an instance: what the index switches to in one transaction."""

    storage_key: str
    transfer_syntax: str
    bytes_stored: int
    sha256: str


class StoredInstance(TypedDict):
    """An instance to send (``Catalogue.matching_instances``: C-MOVE, C-GET, WADO-RS)."""

    pk: int
    sop_instance_uid: str
    sop_class_uid: str
    storage_key: str
    transfer_syntax_stored: str
    bytes_stored: int
    sha256: str
    series_uid: str
    study_uid: str


class InstanceFacts(TypedDict):
    """One stored instance as the compressor, the admin commands and retrieve see it: its
    row's columns (and its series' and study's UIDs, its series' modality); the facts the
    policy's rules match on are among them (``compacs.rules.MATCH_KEYS``)."""

    pk: int
    sop_instance_uid: str
    sop_class_uid: str
    storage_key: str
    transfer_syntax_received: str
    transfer_syntax_stored: str
    bytes_stored: int
    calling_ae: str
    called_ae: str
    photometric_interpretation: str | None
    bits_stored: int | None
    bits_allocated: int | None
    pixel_representation: int | None
    compression: str | None
    """The compression state (``compacs.index.compression_state.CompressionState``)."""
    compression_note: str | None
    tier: str | None
    stored_at: str
    modality: str | None
    series_uid: str
    study_uid: str
    job_tier: NotRequired[str]
    """The tier whose job this is, on instances claimed as jobs."""


class ForwardItem(TypedDict):
    """One forwarding queue item with its instance (``ForwardQueue.claim_forwards``,
    ``forward_items``)."""

    pk: int
    destination: str
    syntaxes: tuple[str, ...]
    state: str
    """A ``compacs.index.forward_state.ForwardState``."""
    attempts: int
    not_before: float
    transaction_uid: str | None
    transfer_syntax_sent: str | None
    bytes_sent: int | None
    last_error: str | None
    updated_at: str | None
    instance_pk: int
    sop_instance_uid: str
    sop_class_uid: str
    storage_key: str
    transfer_syntax_stored: str
    bytes_stored: int
    series_uid: str
    study_uid: str
    commit: bool
    lossy: bool
    codec_options: dict[str, Any]
    """The options of the forward (``Forward``), from its JSON column."""


class ForwardOutcome(TypedDict):
    """What one attempt did to a queue item (``ForwardQueue.finish_forwards``): its new
    state and, when known, the next attempt, the error and what was sent."""

    pk: int
    state: ForwardState
    not_before: NotRequired[float]
    """The next attempt, epoch seconds (absent: at once)."""
    error: NotRequired[str | None]
    syntax: NotRequired[str | None]
    """The transfer syntax sent (absent or None: the recorded one stays)."""
    bytes: NotRequired[int | None]
    transaction_uid: NotRequired[str]
    """The Storage Commitment transaction the item waits for (PS3.4 J.3.3)."""


class Loader(Protocol):
    """Many instances into a new index no node uses yet, in few transactions (``compacs
    reindex``): each :meth:`add` is one transaction, durable when the loading ends."""

    def adopt_identity(self, index_id: str) -> None:
        """Take ``index_id`` as the index's identity (a rebuilt index takes its store's)."""

    def add(self, items: Sequence[tuple[NewInstance, Duplicates]]) -> list[AddResult]:
        """Index ``items`` in their order, in one transaction."""


class Catalogue(Protocol):
    """What is stored and where: instances in, found, located, removed (Orthanc's index
    primitives; the business operations live in ingest, jobs and admin)."""

    url: str

    def identity(self) -> str:
        """The index's UUID, made at its first use; its store is marked with it."""

    def add_instance(self, instance: NewInstance, duplicates: Duplicates) -> AddResult:
        """Index ``instance`` in one committed transaction; return when committed."""

    def locate(self, sop_instance_uid: str) -> InstanceLocation | None: ...

    def instances(self) -> list[InstanceFacts]:
        """Every instance's facts (for ``compacs compress``)."""

    def find(self, query: Query) -> Generator[dict[str, Any], None, None]:
        """C-FIND: the matches of ``query`` at its level, as index rows."""

    def matching_instances(self, query: Query) -> list[StoredInstance]:
        """C-MOVE / C-GET: the instances under the matches of ``query``."""

    def instances_under(self, level: str, uid: str) -> list[Selected]:
        """The instances below the patient/study/series/instance ``uid``."""

    def delete_instance(self, pk: int) -> str | None:
        """Remove the instance's row and job; return the key of the object to delete."""

    def loader(self) -> AbstractContextManager[Loader]:
        """Bulk loading for the length of a ``with`` block (:class:`Loader`)."""

    def close(self) -> None: ...


class CompressionQueue(Protocol):
    """Compression jobs: claimed by workers, finished with the instance's new object
    (``compacs.jobs.compress``, ``compacs.jobs.archive``)."""

    def claim_jobs(
        self, worker: str, limit: int, now: float, archive: bool = False
    ) -> list[InstanceFacts]:
        """Take up to ``limit`` due compression jobs for ``worker`` (none is taken twice);
        archive-tier jobs only with ``archive`` and no ingest-tier job pending. Each
        instance's facts carry ``job_tier``."""

    def queue_archive(self, stored_before: str, limit: int, now: float) -> int:
        """Queue archive-tier jobs for up to ``limit`` ingest-tier instances stored before
        ``stored_before`` (ISO UTC) without a job; return how many."""

    def claim_instance(self, sop_instance_uid: str, worker: str) -> InstanceFacts | None:
        """Take the job of one instance (compression at ingest)."""

    def finish_job(
        self,
        pk: int,
        old_key: str,
        change: ObjectChange | None,
        state: str,
        note: str | None,
        tier: str | None = None,
    ) -> bool:
        """Record the outcome and drop the job; with ``change``, switch the instance to the
        new object if it still references ``old_key`` (False when it no longer does);
        with ``tier``, record the tier the instance is now stored by."""

    def release_claims(self, node: str) -> int:
        """Make claimed jobs pending again (start-up after a crash)."""


class ForwardQueue(Protocol):
    """The gateway's durable retry queue (``compacs.jobs.forward``, ``compacs queue``)."""

    def enqueue_forwards(self, instance_pks: list[int], forward: Forward) -> int:
        """Queue (or re-queue) ``forward`` for each instance; return how many."""

    def claim_forwards(
        self, worker: str, now: float, limit: int, skip: frozenset[str], only: str | None = None
    ) -> list[ForwardItem]:
        """The next batch: due items of one destination (not in ``skip``; ``only`` that
        one) and one study, oldest first, marked as being sent by ``worker``."""

    def finish_forwards(self, outcomes: Sequence[ForwardOutcome]) -> None:
        """Record per item: state, not_before, error, syntax and bytes sent, transaction."""

    def defer_destination(self, destination: str, until: float) -> None:
        """Keep a destination's pending items waiting until ``until`` (it is down)."""

    def commitment_result(self, transaction_uid: str, committed: set[str], failed: set[str]) -> int:
        """Apply a Storage Commitment report to the items sent under the transaction."""

    def forward_items(self, state: str | None = None, limit: int = 1000) -> list[ForwardItem]:
        """Queue items, with the instance's UIDs (``compacs queue list``)."""

    def requeue_forwards(self, pks: list[int] | None, states: tuple[str, ...]) -> int:
        """Make items pending again, attempts reset (``compacs queue retry``)."""

    def drop_forwards(self, pks: list[int] | None, states: tuple[str, ...]) -> int: ...

    def release_forward_claims(self, stale_before: float, node: str | None = None) -> int:
        """Items sending or waiting for a commitment report since before ``stale_before``
        and, with ``node`` (its start-up), the items that node was sending, become
        pending again."""

    def retention_due(self, now: float) -> list[int]:
        """Instances whose every delivery is done and whose retention time has passed."""


class Reports(Protocol):
    """Counts and sizes for the admin: ``compacs stats``, the web pages, the metrics."""

    def stats(self) -> dict[str, Any]:
        """Counts and bytes: the document behind ``compacs stats --json``."""

    def sizes(self, level: str, uid: str) -> dict[str, Any]:
        """Instances, bytes received/stored, ratio and stored syntaxes under ``uid``."""

    def storage_groups(self) -> list[dict[str, Any]]:
        """Instances and bytes received/stored/saved per (tier, stored transfer syntax,
        modality): what stats and the dashboard group by codec, modality and tier."""

    def received_per_day(self) -> list[dict[str, Any]]:
        """Per UTC day of receipt: instances, bytes received and stored, ratio."""


class Index(Catalogue, CompressionQueue, ForwardQueue, Reports, Protocol):
    """A whole index backend (SQLite, PostgreSQL): every role. Consumers are typed
    against the roles they use."""
