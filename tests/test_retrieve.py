"""C-FIND, C-MOVE and C-GET end to end, with DCMTK findscu/movescu/getscu/storescp and
pynetdicom SCUs. Retrieved pixels must decode bit-exact to what was sent, whatever the
stored syntax and whatever the destination accepts."""

from __future__ import annotations

import re

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
from tests.support.dcmtk import findscu_run
from tests.support.node import echo, free_port, write_config
from tests.support.retrieve import (
    STORED_AS,
    c_move,
    c_move_cancelled,
    fixture_archive,  # noqa: F401 (the archive fixture)
    movescu,
    retrieve,
    study_of,
)
from tests.support.scu import send_datasets


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
