"""`make bench-storage`: bytes stored on a mixed real corpus, compacs beside Orthanc-JLS
(issue 16).

One run, nothing mocked. The corpus (copied into a temporary folder) is every file of
pydicom's test files and pydicom-data of modality CT, MR, CR, US, XA, RF, MG, DX or OT,
uncompressed or losslessly compressed, whose pixels pydicom decodes (group
"lossless-able"), a generated 40-slice CT and two generated signed CT slices (same group),
and every JPEG baseline (.50) file of both folders (group "jpeg baseline"). Files that
share a SOP Instance UID (the same image in several encodings) get a fresh one, so that no
server overwrites one with another.

DCMTK storescu (TCP_NODELAY=1) sends each file in its own transfer syntax (one
presentation context per SOP class and syntax, ``tests/support/dcmtk.storescu_profile``) to
Orthanc with JPEG-LS ingest transcoding (``run.py``'s "orthanc-jls") and to compacs with
its default policy; then ``compacs compress --archive`` applies the archive tier to what
compacs stored (column "n/a" while the option does not exist). A file a server refuses,
or crashes on (the server is restarted and the rest sent again), is counted and named.

Checks on compacs, through the network with independent readers:
- every JPEG baseline instance C-MOVEd to a pynetdicom SCP that accepts only JPEG baseline,
  each frame compared byte for byte with the original's (``pydicom.encaps.generate_frames``);
- every lossless-able instance C-GET in Explicit VR Little Endian only (so compacs decodes),
  its pixels compared with pydicom's decode of the original.

Speeds: compacs's encode (``compacs.codecs.work.encode_best`` with the default policy's
decision, in this process) and decode (``to_peer_syntax`` to Explicit VR Little Endian of
each stored object) in MB/s of native pixels per group and codec, and the archive pass's
wall time.

Writes results/<time>/storage.md and prints it. Usage (from this folder, repository root
on PYTHONPATH): ``python storage_corpus.py [--slices 40]``.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from tests.support.dcmtk import StoreOutcome, own_syntax_pairs, storescu, storescu_profile
from tests.support.destination import Destination
from tests.support.dicomfiles import FOLDERS, storage_files
from tests.support.orthanc import OrthancPeer

from compacs.codecs.work import Outcome, encode_best, to_peer_syntax
from compacs.dicom import part10
from compacs.dicom.attributes import extract
from compacs.dicom.syntaxes import BY_UID
from compacs.rules import DEFAULT_POLICY, Decision, facts_of
from compacs.synthetic import UID_ROOT, ct_series
from peers import Compacs, free_port
from run import JLS

HERE = Path(__file__).resolve().parent
LOSSLESS = "lossless-able"
JPEG = "jpeg baseline"
GROUPS = (LOSSLESS, JPEG)
MODALITIES = frozenset({"CT", "MR", "CR", "US", "XA", "RF", "MG", "DX", "OT"})
SEED = 2016
DEST_AET = "JPEGONLY"
MB = 1e6
ARCHIVE = (sys.executable, "-m", "compacs", "compress", "--archive")


# -- the corpus ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One file of the corpus, as copied into the corpus folder."""

    name: str
    source: str
    path: Path
    group: str
    modality: str
    sop_uid: str
    sop_class: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    size: int
    data_set: int
    """Bytes of the data set as received: the file without its File Meta (PS3.10 7.1)."""
    native: int
    """Bytes of the decoded pixels (Rows x Columns x Samples x Bits Allocated/8 x frames)."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pydicom's warnings about the test files' known defects, silenced while reading."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def decodes(path: Path) -> bool:
    """pydicom decodes every frame of ``path``."""
    with _quiet():
        try:
            dcmread(path).pixel_array  # noqa: B018 - the decode is the test
        except Exception:
            return False
    return True


def has_pixels(path: Path) -> bool:
    with _quiet():
        return "PixelData" in dcmread(path, specific_tags=["PixelData"])


def lossless_syntax(uid: str) -> bool:
    """Uncompressed or a lossless encapsulated syntax (PS3.5 A.4), JPEG baseline aside."""
    ts = BY_UID.get(uid)
    return ts is not None and ts.lossless and uid != JPEGBaseline8Bit


def dcmtk_reads(path: Path) -> bool:
    """DCMTK (what storescu sends with) reads the SOP Class and Instance UIDs of ``path``."""
    out = subprocess.run(
        ["dcmdump", "-q", "+P", "0008,0016", "+P", "0008,0018", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = out.stdout.splitlines()
    found = {line[:11] for line in lines if line[12:14] == "UI" and "no value" not in line}
    return out.returncode == 0 and {"(0008,0016)", "(0008,0018)"} <= found


def select() -> tuple[list[tuple[Path, str]], dict[str, str]]:
    """(file, group) for every file of pydicom's test files and pydicom-data that belongs
    in the corpus (see the module docstring), in the folders' order; and the files of a
    corpus syntax and modality left out, with why."""
    picks, left_out = [], {}
    for f in storage_files():
        if f.transfer_syntax == JPEGBaseline8Bit:
            group = JPEG
        elif lossless_syntax(f.transfer_syntax):
            with _quiet():
                modality = dcmread(f.path, stop_before_pixels=True).get("Modality")
            if modality not in MODALITIES:
                continue
            group = LOSSLESS
        else:
            continue
        if not has_pixels(f.path):
            continue  # not an image (a DICOMDIR's placeholder records)
        if not decodes(f.path):
            left_out[f.name] = "pydicom cannot decode its pixels"
        elif not dcmtk_reads(f.path):
            left_out[f.name] = "DCMTK cannot read its UIDs: storescu cannot send it"
        else:
            picks.append((f.path, group))
    return picks, left_out


def candidates() -> list[tuple[Path, str]]:
    """The files :func:`select` picks."""
    return select()[0]


def source_of(path: Path) -> str:
    return "pydicom" if path.is_relative_to(FOLDERS[0]) else "pydicom-data"


def native_bytes(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames") or 1)
    return ds.Rows * ds.Columns * ds.SamplesPerPixel * (ds.BitsAllocated // 8) * frames


def signed_ct(count: int, seed: int = SEED) -> list[Dataset]:
    """``count`` generated CT slices stored signed (Pixel Representation 1), values in
    Hounsfield units, Bits Stored 16 and 12 alternately (PS3.3 C.7.6.3.1)."""
    out = []
    for n, ds in enumerate(ct_series(count, seed=seed, patient_id="SYN0016S")):
        bits = 16 if n % 2 == 0 else 12
        hu = ds.pixel_array.astype(np.int32) - 1024
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        ds.PixelRepresentation = 1
        ds.BitsStored, ds.HighBit = bits, bits - 1
        ds.RescaleIntercept = 0
        ds.PixelData = np.clip(hu, lo, hi).astype(np.int16).tobytes()
        ds.SeriesDescription = f"SIGNED {bits} BITS"
        out.append(ds)
    return out


def _item(path: Path, name: str, source: str, group: str) -> Item:
    with _quiet():
        ds = dcmread(path, stop_before_pixels=True)
    return Item(
        name=name,
        source=source,
        path=path,
        group=group,
        modality=str(ds.get("Modality") or "(none)"),
        sop_uid=str(ds.SOPInstanceUID),
        sop_class=str(ds.SOPClassUID),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        size=path.stat().st_size,
        data_set=data_set_bytes(path),
        native=native_bytes(ds),
    )


def data_set_bytes(path: Path) -> int:
    """The length of the Part 10 file at ``path`` without its File Meta group: what
    "stored larger than received" compares (a server writes its own meta)."""
    data = path.read_bytes()
    return len(data) - part10.split(data)[1]


def _copy(source: Path, dest: Path, seen: set[str]) -> None:
    """Copy ``source`` byte for byte, or with a fresh SOP Instance UID when an earlier file
    of the corpus has its UID (the rest of the file, Pixel Data included, as it was)."""
    with _quiet():
        ds = dcmread(source)
        uid = str(ds.SOPInstanceUID)
        if uid not in seen:
            dest.write_bytes(source.read_bytes())
        else:
            uid = generate_uid(UID_ROOT, entropy_srcs=[uid, dest.name])
            ds.SOPInstanceUID = uid
            ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.save_as(dest, enforce_file_format=True)
    seen.add(uid)


def build_corpus(
    folder: Path, picks: Sequence[tuple[Path, str]], *, slices: int = 40, signed: int = 2
) -> list[Item]:
    """The corpus in ``folder``: ``picks`` copied, then ``slices`` generated CT slices and
    ``signed`` generated signed CT slices (group lossless-able)."""
    folder.mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    seen: set[str] = set()
    for n, (path, group) in enumerate(picks):
        dest = folder / f"{n:03d}_{path.name}"
        _copy(path, dest, seen)
        items.append(_item(dest, path.name, source_of(path), group))
    generated = [("CT", ds) for ds in ct_series(slices, seed=SEED)] if slices else []
    generated += [("CTsigned", ds) for ds in signed_ct(signed)]
    for n, (label, ds) in enumerate(generated):
        dest = folder / f"gen_{label}{n:03d}.dcm"
        ds.save_as(dest, enforce_file_format=True)
        items.append(_item(dest, dest.name, "compacs.synthetic", LOSSLESS))
    return items


# -- servers -------------------------------------------------------------------------------
@dataclass
class Stored:
    """What one server holds after the corpus was sent."""

    sizes: dict[str, int] = field(default_factory=dict)
    """Bytes on disk per SOP Instance UID."""
    syntaxes: dict[str, str] = field(default_factory=dict)
    data_sets: dict[str, int] = field(default_factory=dict)
    """Bytes of each stored data set, without its File Meta (compacs only)."""
    failures: dict[str, str] = field(default_factory=dict)
    """Corpus file name -> why the server does not hold it."""
    restarts: int = 0


class OrthancSide:
    """Orthanc-JLS: ``run.py``'s configuration (JPEG-LS lossless ingest transcoding)."""

    label = "Orthanc-JLS"

    def __init__(self, workdir: Path) -> None:
        self.peer = OrthancPeer(
            workdir, dicom_port=free_port(), http_port=free_port(), ingest_transcoding=JLS
        )
        self.aet, self.port = self.peer.aet, self.peer.dicom_port

    def start(self) -> None:
        self.peer.start()

    def stop(self) -> None:
        self.peer.stop()

    def died(self) -> str | None:
        code = self.peer.exit_code
        return None if code is None else f"exit status {code}"

    def restart(self) -> None:
        self.peer.stop()
        self.peer.start()

    def sizes(self) -> dict[str, int]:
        return self.peer.instance_sizes()

    def syntaxes(self) -> dict[str, str]:
        return {}


class CompacsSide:
    """compacs with its default policy, and a JPEG-baseline-only C-MOVE destination."""

    label = "compacs"

    def __init__(self, workdir: Path, destination: Destination) -> None:
        self.node = Compacs(workdir, peers=(destination.address,))
        self.aet, self.port = self.node.aet, self.node.port

    def start(self) -> None:
        self.node.start()

    def stop(self) -> None:
        self.node.stop()

    def died(self) -> str | None:
        code = self.node.proc.poll() if self.node.proc else None
        return None if code is None else f"exit status {code}"

    def restart(self) -> None:
        self.node.stop()
        self.node.start()

    def rows(self) -> list[tuple[str, int, str, str]]:
        """(SOP Instance UID, bytes stored, stored syntax, storage key) of every instance."""
        index = self.node.data / "index.sqlite"
        if not index.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as conn:
            return conn.execute(
                "SELECT sop_instance_uid, bytes_stored, transfer_syntax_stored, storage_key "
                "FROM instances"
            ).fetchall()

    def sizes(self) -> dict[str, int]:
        return {uid: size for uid, size, _, _ in self.rows()}

    def syntaxes(self) -> dict[str, str]:
        return {uid: ts for uid, _, ts, _ in self.rows()}

    def objects(self) -> dict[str, Path]:
        """The stored object's file per SOP Instance UID (filesystem store)."""
        from compacs.storage import open_store

        store = open_store(f"file://{self.node.data / 'store'}")
        return {uid: store.local_path(key) for uid, _, _, key in self.rows()}


def deliver(side: OrthancSide | CompacsSide, items: Sequence[Item], work: Path) -> Stored:
    """Send ``items`` with storescu, each in its own syntax. When the server dies, it is
    restarted, the file in flight is sent again on its own and, if the server dies on it
    again, recorded as its crash; then what it does not hold yet is sent again. Bounded:
    each round settles at least one file."""
    result = Stored()
    profile = storescu_profile(
        work / f"{side.label}.cfg", own_syntax_pairs([i.path for i in items])
    )
    for _ in range(len(items) + 1):
        held = side.sizes()
        pending = [i for i in items if i.sop_uid not in held and i.name not in result.failures]
        if not pending:
            break
        _, outcomes = storescu(
            side.port, [i.path for i in pending], profile, aet=side.aet, calling="BENCH"
        )
        said = {o.file: o for o in outcomes}
        death = side.died()
        if death is not None:
            side.restart()
            result.restarts += 1
        held = side.sizes()
        missing = [i for i in pending if i.sop_uid not in held]
        if death is not None and missing:
            suspect = next((i for i in missing if _in_flight(said.get(i.path.name))), missing[0])
            again = _alone(side, suspect, profile)
            if again is not None:  # it takes the server down on its own, again
                result.restarts += 1
                result.failures[suspect.name] = f"server crashed ({again}) on it; restarted"
            continue
        for i in missing:
            o = said.get(i.path.name)
            result.failures[i.name] = f"{o.outcome}: {o.detail}" if o else "not sent"
        break
    result.sizes = side.sizes()
    result.syntaxes = side.syntaxes()
    return result


def _alone(side: OrthancSide | CompacsSide, item: Item, profile: Path) -> str | None:
    """Send ``item`` on its own: how the server died on it (restarted), or None."""
    storescu(side.port, [item.path], profile, aet=side.aet, calling="BENCH")
    death = side.died()
    if death is not None:
        side.restart()
    return death


def _in_flight(outcome: StoreOutcome | None) -> bool:
    """storescu sent the file and got no response: the association broke under it."""
    return outcome is not None and outcome.outcome == "not sent"


def archive_option() -> bool:
    """``compacs compress --archive`` exists in this tree."""
    out = subprocess.run(
        [sys.executable, "-m", "compacs", "compress", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    return "--archive" in out.stdout


def apply_archive(side: CompacsSide) -> float:
    """Stop the node, run ``compacs compress --archive`` on its data, start it again; the
    seconds the command took."""
    side.stop()
    start = time.perf_counter()
    subprocess.run(
        [*ARCHIVE, "--data-dir", str(side.node.data)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    side.start()
    return seconds


# -- retrieval checks ----------------------------------------------------------------------
def _identifier(item: Item) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = item.study_uid
    ds.SeriesInstanceUID = item.series_uid
    ds.SOPInstanceUID = item.sop_uid
    return ds


def _ae(timeout: float = 120) -> AE:
    ae = AE(ae_title="BENCH")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def frames_of(ds: Dataset) -> list[bytes]:
    """The encapsulated frames of ``ds`` (PS3.5 A.4)."""
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1)))


def jpeg_restored(side: CompacsSide, items: Sequence[Item], destination: Destination) -> int:
    """How many of ``items`` (JPEG baseline) compacs C-MOVEs to ``destination`` (JPEG
    baseline only) with every frame byte-identical to the original's."""
    if not items:
        return 0
    destination.arrivals.clear()
    ae = _ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", side.port, ae_title=side.aet)
    if not assoc.is_established:
        raise RuntimeError("no association for C-MOVE")
    try:
        for item in items:
            for _status, _ in assoc.send_c_move(
                _identifier(item), DEST_AET, StudyRootQueryRetrieveInformationModelMove
            ):
                pass
    finally:
        assoc.release()
    arrived = {a.sop_instance_uid: a for a in destination.arrivals}
    same = 0
    for item in items:
        got = arrived.get(item.sop_uid)
        if got is None or got.transfer_syntax != JPEGBaseline8Bit:
            continue
        with _quiet():
            original = dcmread(item.path)
        if frames_of(original) == frames_of(got.dataset):
            same += 1
    return same


def bit_exact(side: CompacsSide, items: Sequence[Item]) -> int:
    """How many of ``items`` compacs gives back over C-GET in Explicit VR Little Endian
    (the only syntax offered) with pixels equal to pydicom's decode of the original."""
    if not items:
        return 0
    received: dict[str, Dataset] = {}

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    classes = sorted({i.sop_class for i in items})
    ae = _ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in classes:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    roles = [build_role(c, scp_role=True) for c in classes]
    assoc = ae.associate(
        "127.0.0.1",
        side.port,
        ae_title=side.aet,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    if not assoc.is_established:
        raise RuntimeError("no association for C-GET")
    exact = 0
    try:
        for item in items:
            for _status, _ in assoc.send_c_get(
                _identifier(item), StudyRootQueryRetrieveInformationModelGet
            ):
                pass
            got = received.pop(item.sop_uid, None)
            if got is None:
                continue
            with _quiet():
                same = np.array_equal(got.pixel_array, dcmread(item.path).pixel_array)
            exact += bool(same)
    finally:
        assoc.release()
    return exact


# -- speeds --------------------------------------------------------------------------------
@dataclass
class Speed:
    native: int = 0
    seconds: float = 0.0
    files: int = 0

    def add(self, native: int, seconds: float) -> None:
        self.native += native
        self.seconds += seconds
        self.files += 1

    @property
    def mb_s(self) -> float:
        return self.native / MB / self.seconds if self.seconds else 0.0


def decision_for(path: Path) -> Decision | str:
    """The default policy's verdict on the file at ``path`` (as ingest decides it)."""
    with _quiet():
        header = dcmread(path, stop_before_pixels=True)
    try:
        attributes = extract(header)
    except ValueError as exc:  # InvalidUID: the node refuses the object at ingest
        return f"refused at ingest ({type(exc).__name__})"
    facts = {k: v for level in attributes.values() for k, v in level.items()}
    facts["transfer_syntax_received"] = str(header.file_meta.TransferSyntaxUID)
    return DEFAULT_POLICY.verdict(facts_of(facts))


def encode_speeds(items: Sequence[Item]) -> dict[tuple[str, str], Speed]:
    """(group, codec) -> encode speed of the default policy's choice, in this process."""
    out: dict[tuple[str, str], Speed] = defaultdict(Speed)
    for item in items:
        decision = decision_for(item.path)
        if not isinstance(decision, Decision):
            out[(item.group, f"kept: {decision}")].add(item.native, 0.0)
            continue
        data = item.path.read_bytes()
        with _quiet():
            start = time.perf_counter()
            encoding = encode_best(data, decision.codecs, decision.options, decision.lossy)
            seconds = time.perf_counter() - start
        codec = encoding.codec if encoding.outcome is Outcome.ENCODED else encoding.outcome
        out[(item.group, str(codec))].add(item.native, seconds)
    return out


def decode_speeds(items: Sequence[Item], objects: dict[str, Path], syntaxes: dict[str, str]):
    """(group, stored syntax) -> speed of compacs's decode of each stored object to
    Explicit VR Little Endian (what a peer that accepts only that syntax gets)."""
    out: dict[tuple[str, str], Speed] = defaultdict(Speed)
    for item in items:
        path = objects.get(item.sop_uid)
        if path is None:
            continue
        data = path.read_bytes()
        with _quiet():
            start = time.perf_counter()
            decoded = to_peer_syntax(data, ExplicitVRLittleEndian)
            seconds = time.perf_counter() - start
        ts = syntaxes[item.sop_uid]
        name = BY_UID[ts].name if ts in BY_UID else ts
        out[(item.group, name if not decoded.error else f"{name} (error)")].add(
            item.native, seconds
        )
    return out


# -- one run -------------------------------------------------------------------------------
@dataclass
class Results:
    items: list[Item]
    orthanc: Stored | None = None
    default: Stored | None = None
    archive: Stored | None = None
    archive_seconds: float = 0.0
    archive_native: int = 0
    jpeg_restored: dict[str, int] = field(default_factory=dict)
    exact: dict[str, int] = field(default_factory=dict)
    encode: dict[tuple[str, str], Speed] = field(default_factory=dict)
    decode: dict[str, dict[tuple[str, str], Speed]] = field(default_factory=dict)
    seconds: float = 0.0
    left_out: dict[str, str] = field(default_factory=dict)


def refresh(stored: Stored, side: CompacsSide) -> Stored:
    """``stored`` with the sizes and syntaxes compacs holds now."""
    stored.sizes, stored.syntaxes = side.sizes(), side.syntaxes()
    stored.data_sets = {uid: data_set_bytes(path) for uid, path in side.objects().items()}
    return stored


def check(tier: str, side: CompacsSide, results: Results, destination: Destination) -> None:
    """The JPEG restore count, the C-GET bit-exact count and the decode speeds of ``tier``."""
    jpeg = [i for i in results.items if i.group == JPEG]
    lossless = [i for i in results.items if i.group == LOSSLESS]
    results.jpeg_restored[tier] = jpeg_restored(side, jpeg, destination)
    results.exact[tier] = bit_exact(side, lossless)
    results.decode[tier] = decode_speeds(results.items, side.objects(), side.syntaxes())


def measure_compacs(results: Results, work: Path, archive: bool) -> None:
    """compacs with its default policy (until every compression job is done) and its
    checks; then, with ``archive``, the archive tier applied and the checks again."""
    with Destination(aet=DEST_AET, syntaxes=[JPEGBaseline8Bit]) as destination:
        side = CompacsSide(work / "compacs", destination)
        side.start()
        try:
            results.default = deliver(side, results.items, work)
            side.node.wait_compressed(len(results.default.sizes), timeout=300)
            refresh(results.default, side)
            check("default", side, results, destination)
            if archive:
                before = dict(results.default.syntaxes)
                results.archive_seconds = apply_archive(side)
                results.archive = refresh(Stored(failures=dict(results.default.failures)), side)
                results.archive_native = sum(
                    i.native
                    for i in results.items
                    if results.archive.syntaxes.get(i.sop_uid, "") != before.get(i.sop_uid, "")
                )
                check("archive", side, results, destination)
        finally:
            side.stop()


def measure_orthanc(results: Results, work: Path) -> None:
    side = OrthancSide(work / "orthanc-jls")
    side.start()
    try:
        results.orthanc = deliver(side, results.items, work)
    finally:
        side.stop()


def measure(items: list[Item], work: Path, *, orthanc: bool = True) -> Results:
    """One run over ``items``: Orthanc-JLS (unless ``orthanc`` is False), compacs default,
    compacs archive tier (when ``compacs compress --archive`` exists), speeds."""
    started = time.monotonic()
    results = Results(items)
    if orthanc:
        print("Orthanc-JLS", flush=True)
        measure_orthanc(results, work)
    print("compacs", flush=True)
    measure_compacs(results, work, archive_option())
    print("encode speeds", flush=True)
    results.encode = encode_speeds(items)
    results.seconds = time.monotonic() - started
    return results


# -- the report ----------------------------------------------------------------------------
def _sum(items: Iterable[Item], sizes: dict[str, int]) -> int:
    return sum(sizes[i.sop_uid] for i in items if i.sop_uid in sizes)


def ratio(items: Sequence[Item], a: dict[str, int] | None, b: dict[str, int] | None) -> str:
    """Bytes of ``a`` over bytes of ``b`` on the files both hold ("n/a" when one is
    missing); ``b`` None-free received sizes are passed as a dict too."""
    if a is None or b is None:
        return "n/a"
    both = [i for i in items if i.sop_uid in a and i.sop_uid in b]
    den = _sum(both, b)
    return f"{_sum(both, a) / den:.3f}x" if den else "n/a"


def ratio_value(items: Sequence[Item], a: dict[str, int] | None, b: dict[str, int]) -> float:
    text = ratio(items, a, b)
    return float(text[:-1]) if text != "n/a" else float("nan")


def received(items: Iterable[Item]) -> dict[str, int]:
    return {i.sop_uid: i.size for i in items}


def _bytes(items: Sequence[Item], stored: Stored | None) -> str:
    return "n/a" if stored is None else f"{_sum(items, stored.sizes):,}"


def _failed(items: Sequence[Item], stored: Stored | None) -> str:
    return "n/a" if stored is None else str(sum(i.name in stored.failures for i in items))


def _sizes(stored: Stored | None) -> dict[str, int] | None:
    return None if stored is None else stored.sizes


def size_rows(results: Results) -> list[str]:
    """Per group and per modality: files, bytes and ratios (ratios on the files both sides
    hold; the failure columns count what a server refused or crashed on)."""
    o, d, a = (_sizes(s) for s in (results.orthanc, results.default, results.archive))
    lines = [
        "| group | modality | files | received | Orthanc-JLS | compacs default | "
        "compacs archive | default / Orthanc | archive / Orthanc | default / received | "
        "archive / received | Orthanc / received | failed Orthanc | failed compacs |",
        "|---" * 14 + "|",
    ]
    for group in GROUPS:
        members = [i for i in results.items if i.group == group]
        if not members:
            continue
        subsets = [(m, [i for i in members if i.modality == m]) for m in _modalities(members)]
        for label, subset in [*subsets, ("**all**", members)]:
            rx = received(subset)
            cells = [
                group,
                label,
                str(len(subset)),
                f"{sum(rx.values()):,}",
                _bytes(subset, results.orthanc),
                _bytes(subset, results.default),
                _bytes(subset, results.archive),
                ratio(subset, d, o),
                ratio(subset, a, o),
                ratio(subset, d, rx),
                ratio(subset, a, rx),
                ratio(subset, o, rx),
                _failed(subset, results.orthanc),
                _failed(subset, results.default),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _modalities(items: Iterable[Item]) -> list[str]:
    return sorted({i.modality for i in items})


def larger_than_received(items: Sequence[Item], stored: Stored | None) -> list[str]:
    """Files whose data set is stored more than 1% larger than received (issue 16: "the
    data set"; the File Meta is the server's own, PS3.10 7.1)."""
    if stored is None:
        return []
    return [i.name for i in items if stored.data_sets.get(i.sop_uid, 0) > i.data_set * 1.01]


def target_rows(results: Results) -> list[str]:
    """Issue 16's targets, each with its value from this run."""
    lossless = [i for i in results.items if i.group == LOSSLESS]
    jpeg = [i for i in results.items if i.group == JPEG]
    o, d, a = (_sizes(s) for s in (results.orthanc, results.default, results.archive))
    rows: list[tuple[str, str, str, bool | None]] = []

    def bounded(label: str, value: float, bound: float) -> None:
        met = None if value != value else value <= bound  # NaN: not measured
        shown = "n/a" if value != value else f"{value:.3f}x"
        rows.append((label, shown, f"<= {bound:.2f}x", met))

    def count(label: str, n: int | None, group: Sequence[Item], stored: Stored | None) -> None:
        """``n`` of the group's files the server holds (all of them: met)."""
        if n is None or stored is None:
            rows.append((label, "n/a", "all held", None))
            return
        held = sum(i.sop_uid in stored.sizes for i in group)
        shown = f"{n} of {held} held" + (f" ({len(group)} sent)" if held != len(group) else "")
        rows.append((label, shown, "all held", n == held))

    def none_of(label: str, names: list[str] | None) -> None:
        if names is None:
            rows.append((label, "n/a", "0", None))
        else:
            rows.append(
                (
                    label,
                    f"{len(names)}" + (f" ({', '.join(names)})" if names else ""),
                    "0",
                    not names,
                )
            )

    orthanc_failed = len(results.orthanc.failures) if results.orthanc else "n/a"
    bounded(
        "mixed corpus (lossless-able), default vs Orthanc-JLS",
        ratio_value(lossless, d, o) if o else float("nan"),
        1.00,
    )
    crashed = set(results.orthanc.failures) if results.orthanc else set()
    none_of(
        f"default: refused or failed where Orthanc-JLS failed ({orthanc_failed})",
        sorted(crashed & set(results.default.failures)) if results.default else None,
    )
    bounded(
        "mixed corpus (lossless-able), archive tier vs Orthanc-JLS",
        ratio_value(lossless, a, o) if o and a else float("nan"),
        0.93,
    )
    count(
        "lossless-able bit-exact over C-GET, default",
        results.exact.get("default"),
        lossless,
        results.default,
    )
    count(
        "lossless-able bit-exact over C-GET, archive tier",
        results.exact.get("archive"),
        lossless,
        results.archive,
    )
    bounded("JPEG baseline, default vs received", ratio_value(jpeg, d, received(jpeg)), 0.85)
    bounded(
        "JPEG baseline, archive tier vs received",
        ratio_value(jpeg, a, received(jpeg)) if a else float("nan"),
        0.85,
    )
    count(
        "JPEG baseline restored byte-identical (C-MOVE to a .50-only SCP), default",
        results.jpeg_restored.get("default"),
        jpeg,
        results.default,
    )
    count(
        "JPEG baseline restored byte-identical (C-MOVE to a .50-only SCP), archive tier",
        results.jpeg_restored.get("archive"),
        jpeg,
        results.archive,
    )
    none_of(
        "data sets stored > 1.01x received, default",
        larger_than_received(results.items, results.default) if results.default else None,
    )
    none_of(
        "data sets stored > 1.01x received, archive tier",
        larger_than_received(results.items, results.archive) if results.archive else None,
    )
    lines = ["| target | value | bound | met |", "|---|---|---|---|"]
    for label, value, bound, met in rows:
        shown = "n/a" if met is None else ("yes" if met else "NO")
        lines.append(f"| {label} | {value} | {bound} | {shown} |")
    return lines


def speed_rows(results: Results) -> list[str]:
    lines = [
        "| tier | direction | group | path | files | native MB | seconds | MB/s |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def add(tier: str, direction: str, speeds: dict[tuple[str, str], Speed]) -> None:
        for (group, path), s in sorted(speeds.items()):
            rate = f"{s.mb_s:.1f}" if s.seconds else "-"
            lines.append(
                f"| {tier} | {direction} | {group} | {path} | {s.files} | "
                f"{s.native / MB:.1f} | {s.seconds:.2f} | {rate} |"
            )

    add("default", "encode (encode_best, in process, 1 core)", results.encode)
    for tier, speeds in results.decode.items():
        add(tier, "decode to Explicit VR LE (to_peer_syntax, in process)", speeds)
    if results.archive is not None:
        s = results.archive_seconds
        rate = f"{results.archive_native / MB / s:.1f}" if s else "-"
        lines.append(
            f"| archive | encode (compacs compress --archive, wall, its workers) | all | "
            f"objects it changed | - | {results.archive_native / MB:.1f} | {s:.2f} | {rate} |"
        )
    return lines


def file_rows(results: Results) -> list[str]:
    """The corpus, file by file (the generated CT series as one row)."""
    lines = [
        "| file | source | group | modality | received syntax | received | Orthanc-JLS | "
        "compacs default | compacs archive | notes |",
        "|---" * 10 + "|",
    ]
    series = [i for i in results.items if i.name.startswith("gen_CT0")]
    rows: list[tuple[str, list[Item]]] = [
        (i.name, [i]) for i in results.items if not i.name.startswith("gen_CT0")
    ]
    if series:
        rows.append((f"gen_CT000..{len(series) - 1:03d} ({len(series)} slices)", series))
    for label, members in rows:
        first = members[0]
        notes = []
        for who, stored in (
            ("Orthanc-JLS", results.orthanc),
            ("compacs", results.default),
        ):
            for m in members:
                if stored is not None and m.name in stored.failures:
                    notes.append(f"{who}: {stored.failures[m.name]}")
        ts = BY_UID[first.transfer_syntax].name if first.transfer_syntax in BY_UID else "?"
        lines.append(
            f"| {label} | {first.source} | {first.group} | {first.modality} | {ts} | "
            f"{sum(m.size for m in members):,} | {_bytes(members, results.orthanc)} | "
            f"{_bytes(members, results.default)} | {_bytes(members, results.archive)} | "
            f"{'; '.join(notes)} |"
        )
    return lines


def render(results: Results, header: Sequence[str] = ()) -> str:
    lossless = sum(i.group == LOSSLESS for i in results.items)
    restarts = results.orthanc.restarts if results.orthanc else 0
    lines = [
        *header,
        f"Corpus: {len(results.items)} files ({lossless} lossless-able, "
        f"{len(results.items) - lossless} JPEG baseline), "
        f"{sum(i.size for i in results.items):,} bytes received; run took "
        f"{results.seconds:.0f} s. Orthanc-JLS restarted {restarts} time(s) after a crash.",
        "Ratios are over the files both sides hold; 'n/a': not measured in this run "
        "(no Orthanc, or no `compacs compress --archive` in this tree).",
        "",
        "## Bytes stored, per group and modality",
        "",
        *size_rows(results),
        "",
        "## Issue 16's targets",
        "",
        *target_rows(results),
        "",
        "## Encode and decode speed (MB/s of native pixels)",
        "",
        *speed_rows(results),
        "",
        "## The corpus, file by file",
        "",
        *file_rows(results),
        "",
        "Left out (a corpus syntax and modality, but unusable): "
        + (", ".join(f"{n} ({why})" for n, why in results.left_out.items()) or "none"),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=40, help="generated CT slices")
    parser.add_argument("--signed", type=int, default=2, help="generated signed CT slices")
    parser.add_argument("--no-orthanc", action="store_true", help="compacs only")
    args = parser.parse_args()
    out = HERE / "results" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="compacs-storage-") as tmp:
        work = Path(tmp)
        picks, left_out = select()
        items = build_corpus(work / "corpus", picks, slices=args.slices, signed=args.signed)
        print(f"corpus: {len(items)} files", flush=True)
        results = measure(items, work, orthanc=not args.no_orthanc)
        results.left_out = left_out
    header = [f"# compacs storage on a mixed real corpus, {datetime.now():%Y-%m-%d %H:%M}", ""]
    text = render(results, header)
    (out / "storage.md").write_text(text)
    print(text)
    print(f"written to {out / 'storage.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
