"""``compacs verify``: is every indexed instance still whole, and is anything left over?

Per indexed instance: its object exists, has the size and SHA-256 the index recorded,
parses as DICOM, carries the SOP Instance UID of its row, and (unless ``decode`` is off)
its pixel data decodes. Per stored object: some row references it, or it is an orphan.
Problems name the SOP Instance UID and the storage key only, never patient data.

Safe on a running node: the store is listed before the index is read (an object whose
row is committed later is at worst reported as an orphan), each row is looked up again
right before its object is read, and a missing object is looked up once more (a
compression may have switched the row meanwhile). Orphans are deleted only on request,
only when older than :data:`ORPHAN_MIN_AGE`, and only after checking once more that no
row references them.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels

from compacs.admin.console import Progress, reasons
from compacs.codecs.decode import stored_frames
from compacs.codecs.pixels import NotCompressible, PixelInfo
from compacs.dicom import part10
from compacs.index import Catalogue, InstanceLocation
from compacs.logs import about
from compacs.storage import BlobStore, parse_key

MISSING = "missing"
SIZE = "size"
DIGEST = "digest"
UNREADABLE = "unreadable"
UID_MISMATCH = "uid-mismatch"
UNDECODABLE = "undecodable"
ORPHAN = "orphan"
KINDS = (MISSING, SIZE, DIGEST, UNREADABLE, UID_MISMATCH, UNDECODABLE, ORPHAN)

ORPHAN_MIN_AGE = 60.0
"""Seconds an orphan must have existed before ``--repair-orphans`` deletes it: a younger
one may be an object whose index row a running node has not committed yet."""

_CHUNK = 512


@dataclass(frozen=True)
class Problem:
    kind: str
    key: str
    sop_instance_uid: str | None
    detail: str


@dataclass
class VerifyReport:
    instances: int = 0
    objects: int = 0
    decoded: bool = True
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    """Orphan keys deleted by ``repair_orphans``."""

    @property
    def counts(self) -> Counter[str]:
        return Counter(p.kind for p in self.problems)

    @property
    def clean(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "objects": self.objects,
            "decoded": self.decoded,
            "seconds": round(self.seconds, 3),
            "clean": self.clean,
            "counts": {kind: self.counts[kind] for kind in KINDS},
            "problems": [asdict(p) for p in self.problems],
            "repaired": self.repaired,
        }


def decode_problem(ds: Dataset) -> str | None:
    """Why the pixel data of ``ds`` (read in full) does not decode, or None when it does
    (or when there is none). Uses the decoders compacs relies on for retrieval."""
    try:
        info = PixelInfo.of(ds)
    except NotCompressible:
        # nothing compacs' codecs carry (no pixels, float or 1-bit pixels): pydicom decodes
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            return None
        try:
            for _ in iter_pixels(ds):
                pass
        except Exception as exc:
            return f"pixel data does not decode: {type(exc).__name__}: {exc}"[:300]
        return None
    try:
        frames = stored_frames(ds, info)
    except Exception as exc:
        return f"pixel data does not decode: {type(exc).__name__}: {exc}"[:300]
    if len(frames) != info.frames:
        return f"pixel data decodes to {len(frames)} frame(s), Number of Frames is {info.frames}"
    for n, frame in enumerate(frames, 1):
        if tuple(frame.shape[:2]) != (info.rows, info.columns):
            return f"frame {n} decodes to {frame.shape}, not {info.rows}x{info.columns}"
    return None


def check_object(data: bytes, location: InstanceLocation, decode: bool) -> Problem | None:
    """The first problem of one instance's object bytes against its index row."""
    key, uid = location.storage_key, location.sop_instance_uid

    def problem(kind: str, detail: str) -> Problem:
        return Problem(kind, key, uid, detail)

    if len(data) != location.bytes_stored:
        return problem(SIZE, f"{len(data)} bytes, the index says {location.bytes_stored}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != location.sha256:
        return problem(DIGEST, f"SHA-256 {digest[:16]}... differs from the index's")
    try:
        ds = part10.read(data, pixels=decode)
        found = str(ds.get("SOPInstanceUID", "") or "")
    except Exception as exc:
        return problem(UNREADABLE, f"does not parse: {type(exc).__name__}: {exc}"[:300])
    if found != uid:
        return problem(UID_MISMATCH, f"the object's SOP Instance UID is {found or '(none)'!r}")
    if decode and (why := decode_problem(ds)):
        return problem(UNDECODABLE, why)
    return None


class Verifier:
    def __init__(
        self, store: BlobStore, index: Catalogue, *, decode: bool = True, workers: int = 2
    ) -> None:
        self.store = store
        self.index = index
        self.decode = decode
        self.workers = max(1, workers)

    def run(
        self,
        *,
        repair_orphans: bool = False,
        progress: Callable[[int], Progress] | None = None,
    ) -> VerifyReport:
        start = time.monotonic()
        report = VerifyReport(decoded=self.decode)
        stored = set(self.store.keys())  # listed first: see the module docstring
        rows = self.index.instances()
        report.objects, report.instances = len(stored), len(rows)
        referenced = {row["storage_key"] for row in rows}
        bar = progress(len(rows)) if progress else None
        with ThreadPoolExecutor(self.workers) as pool:
            for chunk in _chunks([row["sop_instance_uid"] for row in rows], _CHUNK):
                for key, problem in pool.map(self._check, chunk):
                    if key is not None:
                        referenced.add(key)
                    if problem is not None:
                        report.problems.append(problem)
                    if bar:
                        bar.step(note=f"problems {len(report.problems)}")
        for key in sorted(stored - referenced):
            if repair_orphans and self._delete_orphan(key):
                report.repaired.append(key)
                continue
            uid = parse_key(key)
            report.problems.append(
                Problem(ORPHAN, key, uid[0] if uid else None, self._orphan_detail(key))
            )
        report.seconds = time.monotonic() - start
        return report

    def _check(
        self, sop_instance_uid: str, retry: bool = True
    ) -> tuple[str | None, Problem | None]:
        """(the key the row references now, the problem found or None)."""
        with about(sop_instance_uid):  # library messages name the instance
            return self._check_located(sop_instance_uid, retry)

    def _check_located(
        self, sop_instance_uid: str, retry: bool
    ) -> tuple[str | None, Problem | None]:
        location = self.index.locate(sop_instance_uid)
        if location is None:
            return None, None  # deleted since the listing
        try:
            data = self.store.get(location.storage_key)
        except FileNotFoundError:
            again = self.index.locate(sop_instance_uid)
            if again is None:
                return None, None
            if retry and again.storage_key != location.storage_key:  # switched meanwhile
                return self._check(sop_instance_uid, retry=False)
            return location.storage_key, Problem(
                MISSING, location.storage_key, sop_instance_uid, "indexed, but not in the store"
            )
        except OSError as exc:
            return location.storage_key, Problem(
                UNREADABLE, location.storage_key, sop_instance_uid, f"cannot be read: {exc}"
            )
        return location.storage_key, check_object(data, location, self.decode)

    def _age(self, key: str) -> float | None:
        try:
            return time.time() - self.store.modified(key)
        except OSError:
            return None

    def _orphan_detail(self, key: str) -> str:
        age = self._age(key)
        if age is None:
            return "no index row references it (gone since)"
        return f"no index row references it; written {_ago(age)} ago"

    def _delete_orphan(self, key: str) -> bool:
        """Delete ``key`` if it is old enough and still unreferenced."""
        age = self._age(key)
        if age is None or age < ORPHAN_MIN_AGE:
            return False
        parsed = parse_key(key)
        if parsed is not None:
            location = self.index.locate(parsed[0])
            if location is not None and location.storage_key == key:
                return False  # a row references it now
        self.store.delete(key)
        return True


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for n in range(0, len(items), size):
        yield items[n : n + size]


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def _by_kind(problems: list[Problem]) -> str:
    """``undecodable 2 (2x why), orphan 1``: the count of each kind of problem, and why
    for the kinds whose reason varies (damage; not missing objects or orphans)."""
    parts = []
    for kind in KINDS:
        details = [p.detail for p in problems if p.kind == kind]
        if not details:
            continue
        why = "" if kind in (MISSING, ORPHAN) else f" ({reasons(details)})"
        parts.append(f"{kind} {len(details)}{why}")
    return ", ".join(parts)


def print_report(report: VerifyReport, out: TextIO = sys.stdout) -> None:
    """The human summary: totals, counts per kind, then each problem on its own line."""
    rate = report.instances / report.seconds if report.seconds else 0.0
    print(
        f"verified {report.instances} instance(s) and {report.objects} stored object(s) "
        f"in {report.seconds:.1f} s ({rate:.0f}/s)"
        + ("" if report.decoded else "; pixel data not decoded (--no-decode)"),
        file=out,
    )
    if report.repaired:
        print(f"deleted {len(report.repaired)} orphan object(s):", file=out)
        for key in report.repaired:
            print(f"  {key}", file=out)
    if report.clean:
        print("clean: no problems found", file=out)
        return
    counts = report.counts
    print(f"{len(report.problems)} problem(s): " + _by_kind(report.problems), file=out)
    for p in sorted(report.problems, key=lambda p: (KINDS.index(p.kind), p.key)):
        print(f"  {p.kind:<12} {p.sop_instance_uid or '-'}  {p.key}  {p.detail}", file=out)
    if counts[ORPHAN]:
        print(
            f"orphans older than {ORPHAN_MIN_AGE:.0f} s are deleted by "
            "`compacs verify --repair-orphans`",
            file=out,
        )
