"""C-FIND, C-MOVE and C-GET end to end, with DCMTK findscu/movescu/getscu/storescp and
pynetdicom SCUs. Retrieved pixels must decode bit-exact to what was sent, whatever the
stored syntax and whatever the destination accepts."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from compacs.codecs.transcode import decompress
from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.conftest import dcmtk_env, echo, free_port, require_dcmtk, write_config
from tests.support.dcmtk import findscu_run
from tests.support.scu import send_datasets

# Each calling AE's images are stored in another syntax (see CONFIG): retrieval is
# checked for every stored syntax.
STORED_AS = {
    "SEND_JLS": "jpeg-ls",
    "SEND_J2K": "jpeg-2000",
    "SEND_HTJ": "htj2k",
    "SEND_RLE": "rle",
    "SEND_JXL": "jpeg-xl",
    "SEND_RAW": "keep",
}
CONFIG = '[compression]\nwhen = "ingest"\n' + "".join(
    f'[[compression.rules]]\ncalling_ae = "{aet}"\naction = "{action}"\n'
    for aet, action in STORED_AS.items()
)


class StoreSCP:
    """DCMTK storescp as a C-MOVE destination, writing what it receives to a folder."""

    def __init__(
        self, folder: Path, aet: str, accept_all: bool, options: tuple[str, ...] = ()
    ) -> None:
        require_dcmtk()
        self.folder, self.aet, self.port = folder, aet, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        cmd = ["storescp", "-aet", aet, "-od", str(folder), "-uf"]  # -uf: name by SOP UID
        cmd += ["+xa"] if accept_all else []  # default: uncompressed syntaxes only
        cmd += options  # e.g. +xy: JPEG baseline preferred
        self.proc = subprocess.Popen(
            [*cmd, str(self.port)],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while echo(self.port, aet, timeout=2) != Status.SUCCESS:
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)

    def received(self) -> dict[str, pydicom.Dataset]:
        out = {}
        for path in self.folder.iterdir():
            ds = pydicom.dcmread(path)
            out[str(ds.SOPInstanceUID)] = ds
        return out

    def clear(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A node holding one study per stored syntax, two storescp destinations."""
    from tests.conftest import NodeProcess

    base = tmp_path_factory.mktemp("retrieve")
    unc = StoreSCP(base / "unc", "DEST_UNC", accept_all=False)
    every = StoreSCP(base / "all", "DEST_ALL", accept_all=True)
    config = write_config(base / "node.toml", CONFIG)
    node = NodeProcess(
        base / "data",
        config=config,
        extra_args=(
            "--peer",
            f"DEST_UNC@127.0.0.1:{unc.port}",
            "--peer",
            f"DEST_ALL@127.0.0.1:{every.port}",
        ),
    )
    try:  # a set-up that fails stops what it started too
        node.start()
        sent: dict[str, dict[str, Dataset]] = {}
        for n, aet in enumerate(STORED_AS):
            series = list(ct_series(6, 96, 96, seed=40 + n, patient_id=f"RET{n}"))
            assert send_datasets(node.port, series, calling=aet) == [Status.SUCCESS] * 6
            sent[aet] = {str(ds.SOPInstanceUID): ds for ds in series}
        yield node, sent, unc, every
    finally:
        node.stop()
        unc.stop()
        every.stop()


def study_of(series: dict[str, Dataset]) -> str:
    return str(next(iter(series.values())).StudyInstanceUID)


def retrieve(tool: str, node, study_uid: str, *options: str) -> subprocess.CompletedProcess[str]:
    """DCMTK movescu or getscu for one study (Study Root)."""
    command = [tool, "-v", "-S", "-aec", node.aet, *options, "-k", "QueryRetrieveLevel=STUDY"]
    command += ["-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(node.port)]
    return subprocess.run(command, capture_output=True, text=True, env=dcmtk_env(), timeout=300)


def movescu(node, destination: str, study_uid: str) -> subprocess.CompletedProcess[str]:
    return retrieve("movescu", node, study_uid, "-aem", destination)


def c_move(node, study_uid: str, destination: str) -> list:
    """The responses of a pynetdicom C-MOVE of the study ``study_uid`` to ``destination``."""
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.aet)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    try:
        return list(
            assoc.send_c_move(identifier, destination, StudyRootQueryRetrieveInformationModelMove)
        )
    finally:
        assoc.release()


def c_move_cancelled(assoc, study_uid: str, destination: str, msg_id: int) -> Dataset:
    """The final status of a C-MOVE of the study ``study_uid`` on ``assoc``, cancelled
    (C-CANCEL, PS3.4 C.4.2.2.3) at its first pending response."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    final = None
    model = StudyRootQueryRetrieveInformationModelMove
    for n, (status, _) in enumerate(
        assoc.send_c_move(identifier, destination, model, msg_id=msg_id)
    ):
        if n == 0 and status.Status == 0xFF00:
            assoc.send_c_cancel(msg_id, query_model=model)
        final = status
    return final


def pixels(ds: Dataset) -> np.ndarray:
    return decompress(ds).pixel_array  # compacs' table decodes JPEG XL, which pydicom cannot


def test_stored_syntaxes_are_the_ones_the_rules_chose(archive):
    node, *_ = archive
    stats = node.stats()
    assert set(stats["by_transfer_syntax"]) == {
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.110",
        "1.2.840.10008.1.2.1",
    }


@pytest.mark.parametrize("aet", list(STORED_AS))
def test_movescu_to_an_uncompressed_only_destination_is_bit_exact(archive, aet):
    node, sent, unc, _ = archive
    unc.clear()
    result = movescu(node, "DEST_UNC", study_of(sent[aet]))
    assert result.returncode == 0, result.stderr[-1500:]
    received = unc.received()
    assert set(received) == set(sent[aet])
    for uid, ds in received.items():
        assert not ds.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(ds.pixel_array, sent[aet][uid].pixel_array)


@pytest.mark.parametrize("aet", list(STORED_AS))
def test_movescu_to_a_destination_accepting_everything_gets_the_stored_syntax(archive, aet):
    node, sent, _, every = archive
    every.clear()
    assert movescu(node, "DEST_ALL", study_of(sent[aet])).returncode == 0
    received = every.received()
    assert set(received) == set(sent[aet])
    with_syntax = {str(ds.file_meta.TransferSyntaxUID) for ds in received.values()}
    stored = node.stats()["by_transfer_syntax"]
    assert with_syntax <= set(stored)
    for uid, ds in received.items():
        assert np.array_equal(pixels(ds), sent[aet][uid].pixel_array)


def test_movescu_to_an_unknown_destination_is_refused_with_a801(archive):
    node, sent, *_ = archive
    result = movescu(node, "NOBODY", study_of(sent["SEND_JLS"]))
    output = result.stdout + result.stderr
    assert "MoveDestinationUnknown" in output  # DCMTK's name for 0xA801
    assert echo(node.port) == Status.SUCCESS


def test_getscu_retrieves_bit_exact(archive, tmp_path):
    node, sent, *_ = archive
    result = retrieve("getscu", node, study_of(sent["SEND_JXL"]), "-od", str(tmp_path))
    assert result.returncode == 0, result.stderr[-1500:]
    received = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, tmp_path.iterdir())}
    assert set(received) == set(sent["SEND_JXL"])
    for uid, ds in received.items():
        assert np.array_equal(ds.pixel_array, sent["SEND_JXL"][uid].pixel_array)


def test_pynetdicom_get_and_cancelled_move(archive):
    node, sent, *_ = archive
    got: list[Dataset] = []

    def on_store(event):
        got.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_requested_context(CTImageStorage)
    role = build_role(CTImageStorage, scp_role=True)
    assoc = ae.associate(
        "127.0.0.1",
        node.port,
        ae_title=node.aet,
        ext_neg=[role],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_of(sent["SEND_HTJ"])
        identifier.SeriesInstanceUID = next(iter(sent["SEND_HTJ"].values())).SeriesInstanceUID
        statuses = [
            s.Status
            for s, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        ]
        assert statuses[-1] == Status.SUCCESS
        assert {str(ds.SOPInstanceUID) for ds in got} == set(sent["SEND_HTJ"])

        # C-CANCEL after the first pending response of a move (40 instances, so that the
        # cancel arrives long before the last sub-operation)
        many = list(ct_series(40, 256, 256, seed=90, patient_id="CANCEL"))
        assert send_datasets(node.port, many, calling="SEND_CAN") == [Status.SUCCESS] * 40
        final = c_move_cancelled(assoc, str(many[0].StudyInstanceUID), "DEST_UNC", 7)
        assert final.Status == 0xFE00
        assert final.NumberOfCompletedSuboperations < 40
    finally:
        assoc.release()


def test_unreadable_file_is_one_failed_sub_operation(archive):
    """A file missing from the store: B000, its UID in the Failed SOP Instance UID List,
    the other instances delivered (never a stale data set)."""
    node, sent, unc, _ = archive
    import sqlite3

    series = sent["SEND_RAW"]
    victim = sorted(series)[2]
    with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
        (key,) = conn.execute(
            "SELECT storage_key FROM instances WHERE sop_instance_uid = ?", (victim,)
        ).fetchone()
    path = node.data_dir / "store" / key
    saved = path.read_bytes()
    path.unlink()
    unc.clear()
    try:
        responses = c_move(node, study_of(series), "DEST_UNC")
    finally:
        path.write_bytes(saved)
    final, failed = responses[-1]
    assert final.Status == 0xB000
    assert final.NumberOfFailedSuboperations == 1 and final.NumberOfCompletedSuboperations == 5
    uids = failed.FailedSOPInstanceUIDList
    assert ([uids] if isinstance(uids, str) else list(uids)) == [victim]
    assert set(unc.received()) == set(series) - {victim}


def findscu(node, *keys: str) -> list[str]:
    """findscu's matches, each as its dump text."""
    result = findscu_run(node, "-v", "-S", keys=keys)
    return re.split(r"I: Find Response: \d+ \(Pending", result.stdout + result.stderr)[1:]


def test_findscu_study_level_with_derived_keys(archive):
    node, *_ = archive
    matches = findscu(
        node,
        "QueryRetrieveLevel=STUDY",
        "PatientID=RET*",
        "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy",
        "StudyInstanceUID",
    )
    assert len(matches) == len(STORED_AS)
    assert all("[6 ]" in m and "[CT]" in m for m in matches)


PEOPLE = [  # name, id, study date, accession
    ("Doe^John", "P1", "20200110", "A_1"),
    ("DOE^JANE", "P2", "20200215", "A%2"),
    ("Smith^Anna", "P3", "20210301", "AX1"),
    ("Dobson^Ray", "P4", "20190705", "B1"),
]


def test_findscu_matching_rules(plain_node):
    node = plain_node
    uids = []
    for n, (name, pid, date, accession) in enumerate(PEOPLE):
        (ds,) = ct_series(1, 16, 16, seed=200 + n, patient_id=pid, patient_name=name)
        ds.StudyDate, ds.AccessionNumber = date, accession
        assert send_datasets(node.port, [ds]) == [Status.SUCCESS]
        uids.append(str(ds.StudyInstanceUID))
    study = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName")
    # wildcard: Do* matches Doe^John, DOE^JANE (PN case-insensitive by default), Dobson^Ray
    assert len(findscu(node, *study, "PatientName=Do*")) == 3
    # date range, open range
    assert len(findscu(node, *study, "StudyDate=20200101-20201231")) == 2
    assert len(findscu(node, *study, "StudyDate=-20200131")) == 2
    # list of UIDs
    assert len(findscu(node, *study, f"StudyInstanceUID={uids[0]}\\{uids[2]}")) == 2
    # case-sensitive single value (SH), and SQL metacharacters taken literally
    assert len(findscu(node, *study, "AccessionNumber=ax1")) == 0
    assert len(findscu(node, *study, "AccessionNumber=AX1")) == 1
    assert len(findscu(node, *study, "AccessionNumber=A_*")) == 1  # not A%2, not AX1


def test_a_retrieve_needing_over_128_contexts_is_split(node_factory, tmp_path):
    """70 SOP classes, each proposed with its stored syntax (JPEG-LS) and the two native
    ones, a context each: 210 contexts, over the 128 a requestor may propose (PS3.8
    9.3.2.2): two associations."""
    from compacs.dicom.sop_classes import storage_sop_classes
    from compacs.dicom.syntaxes import accepted_for_storage

    sop_classes = [uid for uid in storage_sop_classes() if uid != CTImageStorage][:70]
    received: dict[str, str] = {}
    associations: set[int] = set()

    def on_store(event):
        associations.add(id(event.assoc))
        received[str(event.request.AffectedSOPInstanceUID)] = str(event.context.transfer_syntax)
        return 0x0000

    destination = AE(ae_title="MANYCLASSES")
    for uid in sop_classes:
        destination.add_supported_context(uid, accepted_for_storage())
    port = free_port()
    server = destination.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        node = node_factory(
            extra_args=("--peer", f"MANYCLASSES@127.0.0.1:{port}"),
            config=write_config(tmp_path / "ingest.toml", '[compression]\nwhen = "ingest"\n'),
        )
        series = list(ct_series(len(sop_classes), 16, 16, seed=300))
        for ds, uid in zip(series, sop_classes, strict=True):
            ds.SOPClassUID = uid
            ds.file_meta.MediaStorageSOPClassUID = uid
        assert send_datasets(node.port, series) == [Status.SUCCESS] * len(series)
        ae = AE(ae_title="MOVESCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.aet)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = series[0].StudyInstanceUID
        final, _ = list(
            assoc.send_c_move(identifier, "MANYCLASSES", StudyRootQueryRetrieveInformationModelMove)
        )[-1]
        assoc.release()
    finally:
        server.shutdown()
    assert final.Status == Status.SUCCESS
    assert final.NumberOfCompletedSuboperations == len(series)
    assert set(received) == {str(ds.SOPInstanceUID) for ds in series}
    assert set(received.values()) == {"1.2.840.10008.1.2.4.80"}  # sent as stored
    assert len(associations) == 2


def test_move_and_get_with_an_identifier_that_does_not_fit_get_a900(archive):
    node, *_ = archive
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.aet)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"  # not a level of the Study Root model
    identifier.PatientID = "RET0"
    move = list(
        assoc.send_c_move(identifier, "DEST_UNC", StudyRootQueryRetrieveInformationModelMove)
    )
    get = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    assoc.release()
    assert move[-1][0].Status == 0xA900
    assert get[-1][0].Status == 0xA900
    assert echo(node.port) == Status.SUCCESS
