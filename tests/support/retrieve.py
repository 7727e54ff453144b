"""Retrieving from a node: DCMTK storescp as a C-MOVE destination, DCMTK movescu/getscu and
pynetdicom C-MOVE (PS3.4 C.4.2) of one study; and ``archive``, the module-scoped node
holding one study per stored syntax that tests/test_retrieve.py and test_retrieve_wire.py
retrieve from."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.support.dcmtk import dcmtk_env, require_dcmtk
from tests.support.node import NodeProcess, echo, free_port, write_config
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


@pytest.fixture(name="archive", scope="module")
def fixture_archive(tmp_path_factory):
    """A node holding one study per stored syntax, two storescp destinations."""

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
