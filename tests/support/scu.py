"""pynetdicom storage SCU helpers for the tests: real associations over 127.0.0.1."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from compacs.net.reactor_guard import keep_responses
from tests.support.dicomfiles import DicomFile


def storage_ae(calling: str = "STORESCU", timeout: float = 60) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


@contextmanager
def association(
    port: int,
    contexts: Iterable[tuple[str, str]],
    *,
    aet: str = "COMPACS",
    calling: str = "STORESCU",
    max_pdu: int = 16382,
    timeout: float = 60,
):
    ae = storage_ae(calling, timeout)
    ae.maximum_pdu_size = max_pdu
    for sop_class, ts in dict.fromkeys(contexts):
        ae.add_requested_context(sop_class, ts)
    # pynetdicom's reactor race (#875) hit this client under load: see reactor_guard
    assoc = keep_responses(ae.associate("127.0.0.1", port, ae_title=aet))
    assert assoc.is_established, "association was not established"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def status_of(response: Dataset) -> int | None:
    return int(response.Status) if "Status" in response else None


@contextmanager
def verbatim_sending():
    """Make pynetdicom send a file's data set bytes as they are in the file (no re-encoding)."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def send_files(port: int, files: Sequence[DicomFile], **kwargs) -> list[int | None]:
    """Send each file verbatim, in its own transfer syntax, on one association."""
    contexts = [(f.sop_class_uid, f.transfer_syntax) for f in files]
    assert len(dict.fromkeys(contexts)) <= 128
    statuses = []
    with verbatim_sending(), association(port, contexts, **kwargs) as assoc:
        for f in files:
            statuses.append(status_of(assoc.send_c_store(f.path)))
    return statuses


def send_datasets(port: int, datasets: Iterable[Dataset], **kwargs) -> list[int | None]:
    datasets = list(datasets)
    contexts = [(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets]
    with association(port, contexts, **kwargs) as assoc:
        return [status_of(assoc.send_c_store(ds)) for ds in datasets]


def raw_file(sop_class: str, sop_instance: str, ts: str, dataset_bytes: bytes) -> bytes:
    """A Part 10 file whose meta says what the C-STORE request will say, and any body."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1010.1"
    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=False)
    return out.getvalue() + dataset_bytes


def send_raw(
    port: int, sop_class: str, sop_instance: str, ts: str, dataset_bytes: bytes, **kwargs
) -> Dataset:
    """C-STORE ``dataset_bytes`` verbatim, with the request UIDs given (valid or not)."""
    with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
        f.write(raw_file(sop_class, sop_instance, ts, dataset_bytes))
        f.flush()
        with verbatim_sending(), association(port, [(sop_class, ts)], **kwargs) as assoc:
            return assoc.send_c_store(Path(f.name))


def dataset_bytes(ds: Dataset, *, implicit: bool = False, little: bool = True) -> bytes:
    """``ds`` encoded as a bare data set (no preamble, no meta)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def c_get(
    port: int,
    study_uids: Iterable[str],
    contexts: Iterable[tuple[str, Sequence[str]]],
    *,
    aet: str = "COMPACS",
    calling: str = "GETSCU",
    timeout: float = 60,
) -> list[Dataset]:
    """C-GET (Study Root, PS3.4 C.4.3) of each study by a peer that takes the storage
    sub-operations on ``contexts`` ((SOP class, transfer syntaxes), one presentation
    context each, SCP role): the data sets it received, each with its File Meta. Every
    C-GET must end in Success."""
    got: list[Dataset] = []

    def on_store(event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        got.append(ds)
        return 0x0000

    contexts = list(contexts)
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, list(syntaxes))
    roles = [build_role(c, scp_role=True) for c in dict.fromkeys(c for c, _ in contexts)]
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=aet, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert assoc.is_established
    try:
        for study_uid in study_uids:
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = study_uid
            responses = assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
            statuses = [int(status.Status) for status, _ in responses]
            assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
    finally:
        assoc.release()
    return got


def saved(datasets: Iterable[Dataset], folder: Path) -> list[Path]:
    """``datasets`` written to ``folder`` as Part 10 files named by SOP Instance UID."""
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
