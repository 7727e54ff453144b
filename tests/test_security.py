"""DICOM TLS, access control per calling AE, association limits, PHI-free logs (issue 7).

Certificates are made by the test with openssl: a CA, the node's certificate and a
client certificate, as a site's PKI would issue them.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.support.dcmtk import dcmtk_env
from tests.support.node import NodeProcess, write_config
from tests.support.scu import send_datasets

NOT_AUTHORIZED = 0x0124


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca.pem; server.pem/server.key for 127.0.0.1; client.pem/client.key; rogue.* signed
    by another CA."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", f"/CN=compacs test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "rogue-ca")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem",
                cwd=d)  # fmt: skip
    return d


def tls_client(pki: Path, cert: str | None = "client") -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    if cert:
        context.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    return context


def echo(port: int, calling: str = "ECHOSCU", tls: ssl.SSLContext | None = None) -> object:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    kwargs = {"tls_args": (tls, "127.0.0.1")} if tls else {}
    assoc = ae.associate("127.0.0.1", port, ae_title="COMPACS", **kwargs)
    if assoc.is_established:
        status = assoc.send_c_echo()
        assoc.release()
        return int(status.Status)
    return assoc


@pytest.fixture(scope="module")
def tls_node(pki, tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    config = write_config(
        base / "tls.toml",
        f'[security]\ntls_certificate = "{pki / "server.pem"}"\n'
        f'tls_key = "{pki / "server.key"}"\ntls_client_ca = "{pki / "ca.pem"}"\n'
        "[network]\nacse_timeout = 5\n",
    )
    node = NodeProcess(base / "data", config=config, tls=tls_client(pki)).start()
    yield node
    node.stop()


def test_tls_with_client_certificates_pynetdicom(tls_node, pki):
    assert echo(tls_node.port, tls=tls_client(pki)) == Status.SUCCESS
    # store over TLS
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        "127.0.0.1", tls_node.port, ae_title="COMPACS", tls_args=(tls_client(pki), "127.0.0.1")
    )
    assert assoc.is_established
    (ds,) = ct_series(1, 32, 32, seed=5)
    assert assoc.send_c_store(ds).Status == Status.SUCCESS
    assoc.release()
    assert tls_node.stats()["instances"] == 1


def test_tls_refuses_plain_tcp_and_unknown_client_certificates(tls_node, pki):
    assert not echo(tls_node.port).is_established  # plain DICOM on the TLS port
    assert not echo(tls_node.port, tls=tls_client(pki, None)).is_established  # no client cert
    assert not echo(tls_node.port, tls=tls_client(pki, "rogue")).is_established  # other CA
    assert echo(tls_node.port, tls=tls_client(pki)) == Status.SUCCESS  # still serving


def test_silent_connections_do_not_stop_tls_associations(tls_node, pki):
    """Clients that connect and send nothing (a port scan, a load balancer's health check)
    must not hold the node's accept loop: pynetdicom alone did the handshake there, with
    no timeout, and one silent connection locked every modality out."""
    silent = [socket.create_connection(("127.0.0.1", tls_node.port)) for _ in range(3)]
    try:
        assert echo(tls_node.port, tls=tls_client(pki)) == Status.SUCCESS
    finally:
        for s in silent:
            s.close()
    half = socket.create_connection(("127.0.0.1", tls_node.port), timeout=30)  # silent
    assert half.recv(1) == b""  # closed by the node after the ACSE timeout
    half.close()
    # by the handshake's own timeout, or by the negotiation reaper (net/guard), whichever
    # of the two, both set to the ACSE timeout, comes first; either way the log says so
    lines = tls_node.log().splitlines()
    assert any(
        ("TLS handshake with" in line and "timed out" in line)
        or ("not negotiated within" in line and "(ACSE timeout;" in line)
        for line in lines
    ), lines[-5:]
    assert echo(tls_node.port, tls=tls_client(pki)) == Status.SUCCESS


def test_tls_with_dcmtk(tls_node, pki, tmp_path):
    tls = ["+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem")]
    base = ["-aec", "COMPACS", "127.0.0.1", str(tls_node.port)]
    env = dcmtk_env()
    echo_run = subprocess.run(["echoscu", *tls, *base], env=env, capture_output=True, text=True)
    assert echo_run.returncode == 0, echo_run.stderr
    (ds,) = ct_series(1, 32, 32, seed=6)
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    before = tls_node.stats()["instances"]
    store = subprocess.run(
        ["storescu", *tls, *base, str(path)], env=env, capture_output=True, text=True
    )
    assert store.returncode == 0, store.stderr
    assert tls_node.stats()["instances"] == before + 1
    plain = subprocess.run(["echoscu", *base], env=env, capture_output=True, text=True)
    assert plain.returncode != 0


ACCESS = """
[[access]]
ae_title = "ECHOSCU"
allow = ["echo"]

[[access]]
ae_title = "MODALITY"
allow = ["echo", "store"]

[[access]]
ae_title = "VIEWER"
host = "127.0.0.0/8"
allow = ["echo", "find"]

[[access]]
ae_title = "FARAWAY"
host = "192.0.2.10"
"""


def test_access_control_by_calling_ae_host_and_operation(node_factory, tmp_path):
    node = node_factory(config=write_config(tmp_path / "access.toml", ACCESS))
    # not on the list, or from another host: A-ASSOCIATE-RJ, calling AE not recognized
    for calling in ("STRANGER", "FARAWAY"):
        assoc = echo(node.port, calling)
        assert not isinstance(assoc, int) and assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    dcmtk = subprocess.run(
        ["echoscu", "-aet", "STRANGER", "-aec", "COMPACS", "127.0.0.1", str(node.port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
    )
    assert dcmtk.returncode != 0 and "Calling AE Title Not Recognized" in dcmtk.stderr

    series = list(ct_series(2, 32, 32, seed=7, patient_id="ACL"))
    assert send_datasets(node.port, series[:1], calling="MODALITY") == [Status.SUCCESS]
    assert send_datasets(node.port, series[1:], calling="VIEWER") == [NOT_AUTHORIZED]

    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = "ACL"
    for calling, expected in (("VIEWER", [0xFF00, 0x0000]), ("MODALITY", [NOT_AUTHORIZED])):
        ae = AE(ae_title=calling)
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="COMPACS")
        statuses = [
            int(s.Status)
            for s, _ in assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind)
        ]
        assoc.release()
        assert statuses == expected, calling

    # C-MOVE: an AE without "move" gets no C-MOVE presentation context
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="COMPACS")
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    assoc.release()
    assert accepted == {Verification}
    assert node.stats()["instances"] == 1


def test_association_limit_rejects_transiently(node_factory, tmp_path):
    node = node_factory(
        config=write_config(tmp_path / "limit.toml", "[network]\nmax_associations = 2\n")
    )
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    # The readiness probe's association may still be ending when the first two arrive (the
    # test failed once so under load): hold two established ones, however many tries
    # that takes, then the third must be refused.
    held: list = []
    for _ in range(100):
        if len(held) == 2:
            break
        assoc = ae.associate("127.0.0.1", node.port, ae_title="COMPACS")
        if assoc.is_established:
            held.append(assoc)
        else:
            time.sleep(0.1)
    try:
        assert len(held) == 2
        third = ae.associate("127.0.0.1", node.port, ae_title="COMPACS")
        assert third.is_rejected
        rj = third.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
    finally:
        for a in held:
            a.release()
    # room again, once the released associations' threads have ended (pynetdicom counts
    # threads, and they end a moment after the release: the test failed once so)
    for _ in range(50):
        if echo(node.port) == Status.SUCCESS:
            break
        time.sleep(0.1)
    assert echo(node.port) == Status.SUCCESS


@pytest.mark.parametrize("log_phi", [False, True])
def test_logs_hold_no_patient_names_or_ids_unless_allowed(node_factory, tmp_path, log_phi):
    config = write_config(
        tmp_path / "phi.toml",
        f'[node]\nlog_level = "DEBUG"\n[security]\nlog_phi = {str(log_phi).lower()}\n',
    )
    node = node_factory(config=config)
    (ds,) = ct_series(1, 32, 32, seed=8, patient_id="PHI-ID-4711")
    ds.PatientName = "Secretname^Patient"
    assert send_datasets(node.port, [ds]) == [Status.SUCCESS]
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientName = "Secretname*"
    query.PatientID = ""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="COMPACS")
    answers = list(assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind))
    assoc.release()
    assert any(i is not None and i.PatientID == "PHI-ID-4711" for _, i in answers)
    log = node.log()
    leaked = "Secretname" in log or "PHI-ID-4711" in log
    assert leaked == log_phi
