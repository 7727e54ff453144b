"""C-FIND responses written directly (net/find_wire.py): the identifier bytes are what
pydicom writes for the same identifier, the command set what pynetdicom writes; on the
wire, DCMTK findscu reads every attribute of a 200-match answer as the instances hold it
(UTF-8 names included), each response arrives as one P-DATA-TF PDU, and a C-CANCEL
mid-stream ends the answer with Cancel (PS3.4 C.4.1.2.3)."""

from __future__ import annotations

import hashlib
import random
import re
import sqlite3
import subprocess
from contextlib import closing
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode as pydicom_encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from compacs.dicom.status import Status
from compacs.index.sqlite import SqliteIndex
from compacs.net import find_wire
from compacs.query import (
    DERIVED_KEYS,
    INDEXED_KEYS,
    PATIENT_ROOT,
    STUDY_ROOT,
    identifier_dataset,
    parse_identifier,
    response_elements,
    response_plan,
)
from compacs.synthetic import UID_ROOT, ct_series
from tests.support.dcmtk import dcmtk_env, require_dcmtk
from tests.support.latency import associate, client
from tests.support.node import NO_COMPRESSION, write_config

# -- the identifier encoder against pydicom's writer --------------------------------------

TEXT = [
    "",
    "A",
    "AB",
    "M\u00fcller^J\u00fcrgen",
    "\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046",
    "Doe^John^^Dr",
    "O'Brien\\Smith",
    "trailing ",
    " leading",
    "caf\u00e9",
    "x" * 63,
    "%_*?",
    "a\\b\\c",
]
# per VR: values the index holds, and odd ones (one in ten) the direct path may decline
VALUES = {
    "US": ([0, 1, 512, 65535], [70000, -1, "512"]),
    "IS": (["1", "12", "007", " 5", "-3", "+4", "2147483647", "1\\2", 0, 200], ["1A", "1.5"]),
    "UI": (["1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.3\\1.2.34"], ["1.2.\u00e9"]),
    "TEXT": (TEXT, ["\udc80"]),
    "ASCII": (
        ["A", "AB", "ORIGINAL", "CT\\MR", "20260115", "101500.123", "0930", "1.2"],
        ["caf\u00e9", 3],
    ),
}


def _value(rng: random.Random, vr: str) -> object:
    if rng.random() < 0.15:
        return rng.choice([None, ""])
    kind = vr if vr in VALUES else "TEXT" if vr in ("PN", "LO", "SH", "LT", "ST") else "ASCII"
    usual, odd = VALUES[kind]
    return rng.choice(odd if rng.random() < 0.03 else usual)


def _identifier(rng: random.Random, model: str) -> Dataset:
    """A random request: a level, some indexed and derived keys, some unsupported ones."""
    levels = ("PATIENT", "STUDY", "SERIES", "IMAGE") if model == PATIENT_ROOT else ("STUDY",)
    ds = Dataset()
    ds.QueryRetrieveLevel = rng.choice((*levels, "SERIES", "IMAGE"))
    keywords = rng.sample(sorted(INDEXED_KEYS) + sorted(DERIVED_KEYS), k=rng.randint(1, 12))
    for keyword in keywords:
        setattr(ds, keyword, "")
    for keyword in rng.sample(
        ["ImageComments", "PatientWeight", "OtherPatientIDsSequence", "Manufacturer"], k=2
    ):
        setattr(ds, keyword, [] if keyword.endswith("Sequence") else None)
    return ds


def _row(rng: random.Random) -> dict[str, object]:
    row: dict[str, object] = {}
    for _, column, vr in INDEXED_KEYS.values():
        row[column] = _value(rng, vr)
    for keyword in DERIVED_KEYS:
        row[keyword] = _value(rng, dictionary_VR(keyword))
    return row


def _generated(count: int, seed: int = 15):
    rng = random.Random(seed)
    for _ in range(count):
        model = rng.choice([PATIENT_ROOT, STUDY_ROOT])
        ident = _identifier(rng, model)
        try:
            query = parse_identifier(ident, model)
        except ValueError:
            continue
        plan = response_plan(query, ident, rng.choice(["COMPACS", "ODD", "A"]))
        yield response_elements(plan, _row(rng))


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_identifiers_are_encoded_as_pydicom_encodes_them(implicit):
    written = declined = 0
    for elements in _generated(3000):
        reference = pydicom_encode(identifier_dataset(elements), implicit, True)
        try:
            direct = find_wire.encode_identifier(elements, implicit)
        except find_wire.Unencodable:
            declined += 1
            continue
        assert direct == reference, elements  # None: pydicom could not write it at all
        written += 1
    # most identifiers take the direct path; those with an odd value (an IS of "1A", a US
    # of 70000, non-ASCII in a CS) go to pydicom
    assert written > 2 * declined > 0, (written, declined)


ODD = [
    # (VR, value) pairs the direct encoder must either write as pydicom does or decline
    ("PN", "\u00c9mile^Zola"),
    ("PN", "=\u5c71\u7530"),
    ("PN", "A^B\\C^D"),
    ("LO", "odd"),
    ("LO", "even"),
    ("SH", ""),
    ("CS", "ONLINE"),
    ("CS", "\u00e9"),
    ("DA", "2026"),
    ("TM", "1"),
    ("UI", "1.2.3.4.5"),
    ("IS", "1A"),
    ("IS", 2**31),
    ("IS", "   7   "),
    ("US", 65536),
    ("US", 3),
    ("AE", "ODD"),
    ("SQ", []),
    ("LT", "line one\r\nline two"),
    ("UN", None),
    ("OB", None),
]


@pytest.mark.parametrize("charset", [None, "ISO_IR 192", "ISO_IR 100"])
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_odd_elements_are_written_as_pydicom_writes_them_or_declined(charset, implicit):
    tags = iter(range(0x00100010, 0x00100010 + 4 * len(ODD), 4))
    for vr, value in ODD:
        elements = [(0x00080052, "CS", "IMAGE"), (next(tags), vr, value)]
        if charset:
            elements.insert(0, (0x00080005, "CS", charset))
        try:
            direct = find_wire.encode_identifier(elements, implicit)
        except find_wire.Unencodable:
            assert (vr, value) in {
                ("CS", "\u00e9"),
                ("IS", "1A"),
                ("IS", 2**31),
                ("US", 65536),
            } or (charset != "ISO_IR 192" and not str(value).isascii()), (vr, value)
            continue
        assert direct == pydicom_encode(identifier_dataset(elements), implicit, True), (vr, value)


# -- the command set and the PDU against pynetdicom's ---------------------------------------


@pytest.mark.parametrize("status", [Status.PENDING, Status.PENDING_WARNING])
@pytest.mark.parametrize(
    "sop_class",
    [StudyRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelFind],
)
@pytest.mark.parametrize("message_id", [1, 7, 65535])
def test_a_pending_response_is_the_message_pynetdicom_sends(status, sop_class, message_id):
    identifier = b"\x08\x00\x52\x00CS\x06\x00IMAGE "
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.Status = status
    rsp.Identifier = BytesIO(identifier)
    message = C_FIND_RSP()
    message.primitive_to_message(rsp)
    theirs = [pdv for p in message.encode_msg(3, 16384) for pdv in p.presentation_data_value_list]
    command = find_wire.pending_command(str(sop_class), message_id, status)
    ours = find_wire.pending_pdvs(3, command, identifier, 16384)
    assert [list(pdv) for pdv in theirs] == ours
    # both fit only when the peer's maximum PDU length holds both PDVs (PS3.8 D.1)
    exact = 12 + len(command) + len(identifier)
    assert find_wire.pending_pdvs(3, command, identifier, exact) == ours
    assert find_wire.pending_pdvs(3, command, identifier, exact - 1) is None
    assert find_wire.pending_pdvs(3, command, identifier, 0) == ours


# -- on the wire ---------------------------------------------------------------------------

NAME = "M\u00fcller^J\u00fcrgen=\u30df\u30e5\u30e9\u30fc^\u30e6\u30eb\u30b2\u30f3"
DESCRIPTION = "Thorax \u00fcbersicht"
KEYS = (
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "SOPClassUID",
    "InstanceNumber",
    "Rows",
    "Columns",
)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, dict[str, Dataset]]:
    """200 CT instances of one series, UTF-8 names (ISO_IR 192)."""
    folder = tmp_path_factory.mktemp("series")
    sources = {}
    for n, ds in enumerate(ct_series(200, 16, 16, seed=15, patient_id="WIRE15")):
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = NAME
        ds.SeriesDescription = DESCRIPTION  # 17 bytes in UTF-8: padded
        ds.save_as(folder / f"CT{n:04d}.dcm", enforce_file_format=True)
        sources[str(ds.SOPInstanceUID)] = ds
    return folder, sources


@pytest.fixture(scope="module")
def archive(tmp_path_factory, series):
    """A node holding the series (compression off)."""
    from tests.support.node import NodeProcess

    require_dcmtk()
    work = tmp_path_factory.mktemp("node")
    config = write_config(work / "plain.toml", NO_COMPRESSION)
    node = NodeProcess(work / "data", config=config).start()
    try:
        store = ["storescu", "-aec", node.aet, "127.0.0.1", str(node.port), "+sd", str(series[0])]
        subprocess.run(store, env=dcmtk_env(), check=True, capture_output=True, timeout=300)
        yield node
    finally:
        node.stop()


def _findscu(node, out: Path, keys: list[str], *options: str) -> str:
    cmd = ["findscu", "-v", "-S", "-X", "-od", str(out), "-aec", node.aet, *options]
    for key in keys:
        cmd += ["-k", key]
    proc = subprocess.run(
        [*cmd, "127.0.0.1", str(node.port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("syntax", ["-xe", "-xi"], ids=["explicit", "implicit"])
def test_findscu_reads_every_attribute_of_200_matches(archive, series, tmp_path, syntax):
    _, sources = series
    first = next(iter(sources.values()))
    keys = ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={first.StudyInstanceUID}"]
    keys += [f"SeriesInstanceUID={first.SeriesInstanceUID}", "SOPInstanceUID", *KEYS]
    keys += ["ImageComments"]  # not indexed: answered empty, status 0xFF01 (PS3.4 C.4.1.1.4)
    log = _findscu(archive, tmp_path, keys, syntax)
    answers = [dcmread(path) for path in sorted(tmp_path.glob("rsp*.dcm"))]
    assert len(answers) == 200
    assert len(re.findall(r"Received Find Response \d+ \(Pending", log)) == 200, log[-2000:]
    assert log.count("(Pending: WarningUnsupportedOptionalKeys)") == 200, log[-2000:]
    seen = set()
    for answer in answers:
        source = sources[str(answer.SOPInstanceUID)]
        seen.add(str(answer.SOPInstanceUID))
        assert answer.SpecificCharacterSet == "ISO_IR 192"
        assert answer.QueryRetrieveLevel == "IMAGE"
        assert answer.RetrieveAETitle == archive.aet
        assert answer.InstanceAvailability == "ONLINE"
        assert "ImageComments" in answer and answer.ImageComments in (None, "")
        assert str(answer.StudyInstanceUID) == str(source.StudyInstanceUID)
        assert str(answer.SeriesInstanceUID) == str(source.SeriesInstanceUID)
        for keyword in KEYS:
            assert str(answer[keyword].value) == str(source[keyword].value), keyword
        assert str(answer.PatientName) == NAME
        assert set(e.keyword for e in answer) == {
            *KEYS,
            "SOPInstanceUID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "ImageComments",
            "SpecificCharacterSet",
            "QueryRetrieveLevel",
            "RetrieveAETitle",
            "InstanceAvailability",
        }
    assert seen == set(sources)


def test_each_pending_response_is_one_pdu(archive, series):
    """Command and identifier of a pending response travel in one P-DATA-TF (PS3.8
    9.3.5): 200 matches are 200 PDUs and the final response, not 400 and one."""
    _, sources = series
    first = next(iter(sources.values()))
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = first.StudyInstanceUID
    query.SeriesInstanceUID = first.SeriesInstanceUID
    query.SOPInstanceUID = ""
    query.PatientName = ""
    pdus: list[int] = []
    assoc = associate(client(StudyRootQueryRetrieveInformationModelFind), archive)
    try:
        assoc.bind(evt.EVT_PDU_RECV, lambda e: pdus.append(isinstance(e.pdu, P_DATA_TF)))
        answers = [
            (status.Status, ds)
            for status, ds in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        ]
    finally:
        assoc.release()
    assert [s for s, _ in answers] == [Status.PENDING] * 200 + [Status.SUCCESS]
    assert {str(ds.SOPInstanceUID) for _, ds in answers[:-1]} == set(sources)
    assert {str(ds.PatientName) for _, ds in answers[:-1]} == {NAME}
    assert sum(pdus) == 201


# -- C-CANCEL --------------------------------------------------------------------------------

MANY = 20000


def _fill(data_dir: Path, instances: int) -> tuple[str, str]:
    """``instances`` index rows of one series written straight into a new SQLite index
    (what C-FIND reads; no files), so that an answer lasts long enough to be cancelled."""
    data_dir.mkdir(parents=True)
    SqliteIndex(data_dir / "index.sqlite").close()
    study, series = f"{UID_ROOT}15.1", f"{UID_ROOT}15.2"
    sha = hashlib.sha256(b"").hexdigest()
    with closing(sqlite3.connect(data_dir / "index.sqlite")) as conn, conn:
        conn.execute(
            "INSERT INTO patients (pk, patient_id, patient_name) VALUES (1, 'CANCEL', 'A^B')"
        )
        conn.execute(
            "INSERT INTO studies (pk, patient_fk, study_uid, patient_id, patient_name) "
            "VALUES (1, 1, ?, 'CANCEL', 'A^B')",
            (study,),
        )
        conn.execute(
            "INSERT INTO series (pk, study_fk, series_uid, modality) VALUES (1, 1, ?, 'CT')",
            (series,),
        )
        conn.executemany(
            "INSERT INTO instances (series_fk, sop_instance_uid, sop_class_uid, "
            "instance_number, storage_key, transfer_syntax_received, transfer_syntax_stored, "
            "bytes_received, bytes_stored, sha256, calling_ae, called_ae, received_at, "
            "stored_at) VALUES (1, ?, '1.2.840.10008.5.1.4.1.1.2', ?, 'x', "
            "'1.2.840.10008.1.2.1', '1.2.840.10008.1.2.1', 100, 100, ?, 'TEST', "
            "'COMPACS', '2026-01-15T10:15:00', '2026-01-15T10:15:00')",
            ((f"{UID_ROOT}15.3.{n}", str(n + 1), sha) for n in range(instances)),
        )
    return study, series


def test_a_c_cancel_mid_stream_ends_the_answer_with_cancel(node_factory, tmp_path):
    require_dcmtk()
    study, series = _fill(tmp_path / "data", MANY)
    node = node_factory(config=write_config(tmp_path / "plain.toml", NO_COMPRESSION))
    keys = ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}"]
    keys += [f"SeriesInstanceUID={series}", "SOPInstanceUID", "InstanceNumber"]
    out = tmp_path / "out"
    out.mkdir()
    log = _findscu(node, out, keys, "--cancel", "1")
    pending = len(re.findall(r"Received Find Response \d+ \(Pending", log))
    assert "Received Final Find Response (Cancel" in log, log[-2000:]
    assert 1 <= pending < MANY, pending
    # the node answers the next query in full
    log = _findscu(node, out, [*keys[:3], f"SOPInstanceUID={UID_ROOT}15.3.7"])
    assert len(re.findall(r"Received Find Response \d+ \(Pending", log)) == 1
