"""``compacs reindex``: rebuild the index from the objects in the store (disaster recovery).

Every object is read, hashed and parsed; its indexed attributes are extracted by the
code ingest uses (:func:`compacs.dicom.attributes.extract`) and it is added, under its
own storage key, through the index's bulk loader (:meth:`compacs.index.Catalogue.loader`:
the statements the node uses), in large transactions, into a fresh SQLite file or an empty
PostgreSQL database opened by its URL (:func:`compacs.index.open_index`).

What a file cannot tell is filled in as documented in :data:`NOT_RECOVERED`. Objects
are added in the order they were written (modification time), so the first-received
values win at the study and series levels, and a patient keeps the latest received
values, as at ingest; a compressed object carries the time of its compression, so with
deferred compression that order, and with it which of two disagreeing Patient Names a
patient answers at the Patient level, may differ (each study answers its own).

It is also what restores the patient attributes of studies that an index of schema 3
had filed under one patient (every study without a Patient ID): the schema 4 migration
gives each its own patient, but only the objects hold the names they carried.

Two objects of one SOP Instance UID (a crash between a compression's or a replacement's
write and its delete): the sound one is kept (whole, and its pixel data decodes), then
the compressed one, then the newer; the other is reported as an orphan and left for
``compacs verify --repair-orphans``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO, TypeVar
from urllib.parse import unquote, urlsplit

from compacs.admin.console import Progress
from compacs.admin.verify import decode_problem
from compacs.dicom import part10
from compacs.dicom.attributes import extract
from compacs.dicom.uids import InvalidUID
from compacs.index import Duplicates, IndexUnavailable, Loader, NewInstance, open_index
from compacs.index.sqlite import count_instances, sqlite_url
from compacs.index.sqlite import quiesce as quiesce_file
from compacs.storage import BlobStore, parse_key
from compacs.storage.owner import owner_of

NOT_RECOVERED = (
    "transfer syntax received: the stored one; bytes received: the stored size; "
    "calling AE: Source Application Entity Title (0002,0016) of the file; called AE: the "
    "node's AE title; received time: the file's modification time; Photometric "
    "Interpretation: as stored (a compression may have changed the received one, e.g. "
    "YBR_RCT to RGB); compression state: "
    "unknown (empty), and no compression job is queued (`compacs compress` applies the "
    "policy)"
)
_BATCH = 512


class ReindexError(RuntimeError):
    """Refused or impossible: the message says why and what to do (exit code 2)."""


@dataclass(frozen=True)
class Scanned:
    """One stored object as read back."""

    key: str
    modified: float
    instance: NewInstance | None = None
    compressed: bool = False
    damaged: bool = False
    """Its SHA-256 differs from the digest in its key: changed after it was written."""
    problem: str | None = None
    """Why it cannot be indexed (``instance`` is None)."""


@dataclass(frozen=True)
class Kept:
    key: str
    modified: float
    compressed: bool
    damaged: bool


@dataclass
class ReindexReport:
    target: Path | str
    """A SQLite file, or the URL of a PostgreSQL database."""
    objects: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(key, why) of objects that could not be indexed."""
    orphans: list[tuple[str, str, str]] = field(default_factory=list)
    """(key, SOP Instance UID, why) of second copies that were not indexed."""
    damaged: list[tuple[str, str]] = field(default_factory=list)
    """(key, SOP Instance UID) of indexed objects whose content differs from their key."""
    backup: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.damaged


def sqlite_path(index_url: str) -> Path:
    """The file of a ``sqlite:///`` index URL; ReindexError for any other backend."""
    parts = urlsplit(index_url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path:
        raise ReindexError(f"index URL {index_url!r}: reindex builds SQLite indexes only")
    path = unquote(parts.path)
    return Path("/" + path.lstrip("/")) if path.startswith("/") else Path(path)


def instance_count(path: Path) -> int:
    """Instances in the SQLite index at ``path`` (0 when absent or never used)."""
    try:
        return count_instances(path)
    except IndexUnavailable as exc:
        raise ReindexError(str(exc)) from None


def quiesce(path: Path) -> None:
    """Make sure no process has the index at ``path`` open and its WAL is folded into
    the file (so the file alone is the whole index); ReindexError otherwise."""
    try:
        quiesce_file(path)
    except IndexUnavailable as exc:
        raise ReindexError(str(exc)) from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(new: Path, path: Path) -> Path | None:
    """Replace the index at ``path`` by ``new`` in one rename, keeping the old one as
    ``<name>.bak``; returns the backup's path (None when there was no index)."""
    backup = None
    if path.exists():
        quiesce(path)
        backup = path.with_name(path.name + ".bak")
        link = path.with_name(path.name + ".bak.part")
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, backup)
    os.replace(new, path)
    _fsync(path.parent)
    return backup


def _remove_database(path: Path | str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class Rebuilder:
    def __init__(self, store: BlobStore, called_ae: str, workers: int = 2) -> None:
        self.store = store
        self.called_ae = called_ae
        self.workers = max(1, workers)

    def scan(self, key: str, modified: float) -> Scanned | None:
        """Read one object; None when it vanished meanwhile."""
        try:
            data = self.store.get(key)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return Scanned(key, modified, problem=f"cannot be read: {exc}")
        digest = hashlib.sha256(data).hexdigest()
        try:
            ds = part10.read(data, pixels=False)
            syntax = ds.file_meta.get("TransferSyntaxUID")
        except Exception as exc:
            return Scanned(key, modified, problem=f"does not parse: {type(exc).__name__}: {exc}")
        if not syntax:
            return Scanned(key, modified, problem="no Transfer Syntax UID (0002,0010)")
        try:
            attributes = extract(ds)
        except InvalidUID as exc:
            return Scanned(key, modified, problem=str(exc))
        parsed = parse_key(key)
        try:
            compressed = syntax.is_compressed
        except ValueError:  # a private transfer syntax: pydicom cannot tell
            compressed = False
        instance = NewInstance(
            attributes=attributes,
            storage_key=key,
            transfer_syntax=str(syntax),
            bytes_received=len(data),
            bytes_stored=len(data),
            sha256=digest,
            calling_ae=str(ds.file_meta.get("SourceApplicationEntityTitle", "") or "").strip(),
            called_ae=self.called_ae,
            received_at=datetime.fromtimestamp(modified, UTC).isoformat(timespec="milliseconds"),
        )
        return Scanned(
            key,
            modified,
            instance,
            compressed=compressed,
            damaged=parsed is not None and parsed[1] != digest[:16],
        )

    def _sound(self, kept: Kept) -> bool:
        if kept.damaged:
            return False
        try:
            return decode_problem(part10.read(self.store.get(kept.key))) is None
        except Exception:
            return False

    def _prefer_new(self, new: Kept, old: Kept) -> bool:
        """Of two objects of one SOP Instance UID: the sound one, the compressed one (what
        a compression switched to), then the newer (what a replacement switched to)."""
        new_sound, old_sound = self._sound(new), self._sound(old)
        if new_sound != old_sound:
            return new_sound
        if new.compressed != old.compressed:
            return new.compressed
        return new.modified >= old.modified

    def _listing(self) -> list[tuple[float, str]]:
        """Every stored key with its modification time, oldest first."""
        out = []
        for key in self.store.keys():  # noqa: SIM118 - a BlobStore, not a dict
            try:
                out.append((self.store.modified(key), key))
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                out.append((0.0, key))  # reported when read
        out.sort()
        return out

    def build(
        self, target: Path | str, progress: Callable[[int], Progress] | None = None
    ) -> ReindexReport:
        """Index every stored object into ``target``: a new SQLite file, or an empty
        PostgreSQL database given by its URL."""
        start = time.monotonic()
        report = ReindexReport(target=target)
        listing = self._listing()
        report.objects = len(listing)
        kept: dict[str, Kept] = {}
        bar = progress(len(listing)) if progress else None
        index = open_index(sqlite_url(target) if isinstance(target, Path) else target)
        try:
            with index.loader() as load:
                owner = owner_of(self.store)
                if owner is not None:  # the rebuilt index is the one the store belongs to
                    load.adopt_identity(owner)
                with ThreadPoolExecutor(self.workers) as pool:
                    for chunk in _chunks(listing, _BATCH):
                        scanned = list(pool.map(lambda item: self.scan(item[1], item[0]), chunk))
                        self._load(load, scanned, kept, report, bar)
            stats = index.stats()
            report.counts = {
                table: stats[table] for table in ("patients", "studies", "series", "instances")
            }
        finally:
            index.close()
        report.damaged = sorted((k.key, uid) for uid, k in kept.items() if k.damaged)
        report.seconds = time.monotonic() - start
        return report

    def _load(
        self,
        load: Loader,
        scanned: list[Scanned | None],
        kept: dict[str, Kept],
        report: ReindexReport,
        bar: Progress | None,
    ) -> None:
        """Index one chunk of scanned objects in one transaction."""
        items: list[tuple[NewInstance, Duplicates]] = []
        for item in scanned:
            if item is not None:
                items += self._decide(item, kept, report)
            if bar:
                bar.step(note=f"indexed {len(kept)}")
        load.add(items)

    def _decide(
        self, item: Scanned, kept: dict[str, Kept], report: ReindexReport
    ) -> list[tuple[NewInstance, Duplicates]]:
        """What to index of ``item``: nothing (unreadable, or a second copy that loses),
        a first copy, or a second copy that replaces the one kept so far."""
        if item.instance is None:
            report.failed.append((item.key, item.problem or "cannot be indexed"))
            return []
        uid = item.instance.sop_instance_uid
        new = Kept(item.key, item.modified, item.compressed, item.damaged)
        old = kept.get(uid)
        if old is None:
            kept[uid] = new
            return [(item.instance, Duplicates.KEEP_FIRST)]
        added: list[tuple[NewInstance, Duplicates]] = []
        if self._prefer_new(new, old):
            added.append((item.instance, Duplicates.REPLACE))
            kept[uid], orphan, winner = new, old, new
        else:
            orphan, winner = new, old
        report.orphans.append(
            (orphan.key, uid, f"a second object of this SOP Instance UID; kept {winner.key}")
        )
        return added


def _is_postgres(url: str) -> bool:
    return urlsplit(url).scheme in ("postgresql", "postgres")


T = TypeVar("T")


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for n in range(0, len(items), size):
        yield items[n : n + size]


def _built(
    rebuilder: Rebuilder, target: Path | str, progress: Callable[[int], Progress] | None
) -> ReindexReport:
    """``rebuilder.build(target)``; a failure leaves no half-built file behind."""
    try:
        return rebuilder.build(target, progress)
    except BaseException:
        _remove_database(target)
        raise


def rebuild(
    store: BlobStore,
    index_url: str,
    called_ae: str,
    *,
    into: Path | str | None = None,
    force: bool = False,
    workers: int = 2,
    progress: Callable[[int], Progress] | None = None,
) -> ReindexReport:
    """Rebuild into the new file ``into``, or (``force`` when the current index has
    instances) into a fresh file beside the current index, then swap it in."""
    rebuilder = Rebuilder(store, called_ae, workers)
    if isinstance(into, str) and _is_postgres(into):
        existing = open_index(into)
        try:
            instances = existing.stats()["instances"]
        finally:
            existing.close()
        if instances:
            raise ReindexError(f"--into: that database already indexes {instances} instance(s)")
        return rebuilder.build(into, progress)
    if _is_postgres(index_url):
        raise ReindexError(
            "a PostgreSQL index is rebuilt into a new, empty database: "
            "--into postgresql://.../NEWDB, then point the nodes at it"
        )
    if into is not None:
        into = Path(into)
        if into.exists():
            raise ReindexError(f"--into {into}: the file exists; name a new SQLite file")
        into.parent.mkdir(parents=True, exist_ok=True)
        return _built(rebuilder, into, progress)
    current = sqlite_path(index_url)
    instances = instance_count(current)
    if instances and not force:
        raise ReindexError(
            f"{current} already indexes {instances} instance(s): use --into PATH to build "
            "a new index beside it, or --force to replace it (the old one is kept as "
            f"{current.name}.bak)"
        )
    quiesce(current)
    fresh = current.with_name(current.name + ".reindex")
    _remove_database(fresh)  # what an interrupted reindex left
    report = _built(rebuilder, fresh, progress)
    report.backup = swap_in(fresh, current)
    report.target = current
    return report


def print_report(report: ReindexReport, out: TextIO = sys.stdout) -> None:
    rate = report.objects / report.seconds if report.seconds else 0.0
    c = report.counts
    print(
        f"reindexed {report.objects} stored object(s) in {report.seconds:.1f} s ({rate:.0f}/s) "
        f"into {report.target}",
        file=out,
    )
    print(
        f"  patients {c.get('patients', 0)}  studies {c.get('studies', 0)}  "
        f"series {c.get('series', 0)}  instances {c.get('instances', 0)}",
        file=out,
    )
    if report.backup:
        print(f"  the previous index is kept as {report.backup}", file=out)
    print(
        f"  not indexed: {len(report.failed)} unreadable, {len(report.orphans)} second "
        f"cop{'y' if len(report.orphans) == 1 else 'ies'} (orphans); "
        f"damaged but indexed: {len(report.damaged)}",
        file=out,
    )
    for key, why in report.failed:
        print(f"  unreadable   -  {key}  {why}", file=out)
    for key, uid in report.damaged:
        print(f"  damaged      {uid}  {key}  content differs from the digest in its key", file=out)
    for key, uid, why in report.orphans:
        print(f"  orphan       {uid}  {key}  {why}", file=out)
    print(f"  not in the files, filled in: {NOT_RECOVERED}", file=out)
