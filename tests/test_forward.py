"""The transcoding gateway: forward by rule through the durable queue (issue 6).

Destinations are real SCPs on 127.0.0.1: DCMTK storescp, and a pynetdicom SCP that
records every C-STORE (tests/support/destination.py), so that duplicates and order show.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from collections import Counter

import numpy as np
import pydicom

from compacs.codecs.transcode import decompress
from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.support.dcmtk import dcmtk_env
from tests.support.destination import UNCOMPRESSED, Destination
from tests.support.forwarding import JLS, queue, wait_for
from tests.support.node import free_port, run_cli, write_config
from tests.support.proxy import CountingProxy
from tests.support.scu import send_datasets

J2K = "1.2.840.10008.1.2.4.90"
FAST_RETRIES = "[forwarding]\nretry_delay = 0.2\nretry_max_delay = 1.0\n"


def pixels(ds: pydicom.Dataset) -> np.ndarray:
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds = decompress(ds)
    return ds.pixel_array


def study(n: int, seed: int, size: int = 64, patient: str = "FWD") -> list[pydicom.Dataset]:
    return list(ct_series(n, size, size, seed=seed, patient_id=f"{patient}{seed}"))


def test_forward_everything_to_storescp_as_jpeg_ls(node_factory, tmp_path):
    """--forward: every instance reaches DCMTK storescp once compressed (JPEG-LS, the
    stored syntax), pixels bit-exact."""
    import subprocess

    folder = tmp_path / "storescp"
    folder.mkdir()
    port = free_port()
    scp = subprocess.Popen(
        ["storescp", "-aet", "PACS", "+xa", "-od", str(folder), "-uf", str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        node = node_factory(extra_args=("--forward", f"PACS@127.0.0.1:{port}"))
        sent = study(6, seed=1)
        assert send_datasets(node.port, sent) == [Status.SUCCESS] * 6
        wait_for(lambda: len(list(folder.iterdir())) == 6, what="6 files at storescp")
        wait_for(lambda: all(i["state"] == "done" for i in queue(node, "--all")))
    finally:
        scp.terminate()
        scp.wait(10)
    received = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, folder.iterdir())}
    assert set(received) == {str(ds.SOPInstanceUID) for ds in sent}
    for ds in sent:
        got = received[str(ds.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == JLS
        assert np.array_equal(pixels(got), ds.pixel_array)
    forwarding = node.stats()["forwarding"][f"PACS@127.0.0.1:{port}"]
    assert forwarding["done"] == 6 and forwarding["bytes_sent"] > 0


def test_destination_down_then_up_delivers_everything_once_in_order(node_factory, tmp_path):
    dest = Destination("PACS")
    config = write_config(tmp_path / "fwd.toml", FAST_RETRIES)
    node = node_factory(config=config, extra_args=("--forward", dest.address))
    studies = [study(10, seed=10 + n) for n in range(3)]
    for series in studies:
        assert send_datasets(node.port, series) == [Status.SUCCESS] * 10
    sent = [str(ds.SOPInstanceUID) for series in studies for ds in series]

    # the destination is down: everything waits in the queue, attempts are counted
    wait_for(lambda: any(i["attempts"] >= 2 for i in queue(node)), what="retries")
    waiting = queue(node)
    assert len(waiting) == 30 and {i["state"] for i in waiting} <= {"pending", "sending"}
    assert any("no association" in (i["last_error"] or "") for i in waiting)

    with dest:
        wait_for(lambda: len(queue(node)) == 0, what="queue drained")
        arrivals = list(dest.arrivals)
    delivered = [a.sop_instance_uid for a in arrivals]
    duplicates = sum(n - 1 for n in Counter(delivered).values())
    print(
        f"\ndestination down then up: sent {len(sent)}, queued {len(waiting)}, "
        f"delivered {len(set(delivered))}, duplicates {duplicates}"
    )
    assert sorted(delivered) == sorted(sent) and duplicates == 0
    for series in studies:  # in order within each study
        uids = [str(ds.SOPInstanceUID) for ds in series]
        assert [u for u in delivered if u in uids] == uids
    done = queue(node, "--state", "done")
    assert len(done) == 30 and all(i["transfer_syntax_sent"] == JLS for i in done)


def test_refused_instance_is_retried_then_parked_then_retried_by_hand(node_factory, tmp_path):
    series = study(4, seed=20)
    victim = str(series[1].SOPInstanceUID)
    config = write_config(tmp_path / "fwd.toml", FAST_RETRIES + "max_attempts = 3\n")
    with Destination("PACS", refuse={victim}) as dest:
        node = node_factory(config=config, extra_args=("--forward", dest.address))
        assert send_datasets(node.port, series) == [Status.SUCCESS] * 4
        wait_for(lambda: len(queue(node, "--state", "failed")) == 1, what="parked item")
        wait_for(lambda: len(dest.uids()) == 3, what="the other three")
        (parked,) = queue(node, "--state", "failed")
        assert parked["sop_instance_uid"] == victim
        assert parked["attempts"] == 3 and "0xA700" in parked["last_error"]
        assert victim not in dest.uids()

        dest.refuse.clear()  # the destination is fixed: the admin sends it again
        result = node.cli("queue", "retry", "--failed")
        assert result.returncode == 0 and "1 item(s) queued again" in result.stdout
        wait_for(lambda: victim in dest.uids(), what="the retried instance")
        assert sorted(dest.uids()) == sorted(str(ds.SOPInstanceUID) for ds in series)

    # drop: nothing is parked any more; an item dropped by id leaves the instance stored
    assert node.cli("queue", "drop", "--failed").returncode == 1
    result = node.cli("queue", "drop", str(parked["pk"]))
    assert result.returncode == 0 and "1 item(s) dropped" in result.stdout
    assert parked["pk"] not in {i["pk"] for i in queue(node, "--all")}
    assert node.stats()["instances"] == 4


def test_node_restarted_with_a_full_queue_resumes(node_factory, tmp_path):
    dest = Destination("PACS")
    config = write_config(tmp_path / "fwd.toml", FAST_RETRIES)
    node = node_factory(config=config, extra_args=("--forward", dest.address))
    series = study(8, seed=30)
    assert send_datasets(node.port, series) == [Status.SUCCESS] * 8
    wait_for(lambda: any(i["attempts"] >= 1 for i in queue(node)), what="a failed attempt")
    assert node.stop(signal.SIGTERM) == 0
    assert len(queue(node)) == 8  # the queue is in the index, it survived the stop

    with dest:
        node.start()
        wait_for(lambda: len(queue(node)) == 0, what="queue drained after restart")
        assert sorted(dest.uids()) == sorted(str(ds.SOPInstanceUID) for ds in series)


def test_rules_choose_destinations_and_syntaxes(node_factory, tmp_path):
    """A rule per destination: the first offered syntax the destination accepts is sent,
    transcoded from the stored one; a lossy route sends a derived instance."""
    native_only = Destination("NATIVE", syntaxes=UNCOMPRESSED)
    j2k = Destination("J2K")
    lossy = Destination("LOSSY")
    config = write_config(
        tmp_path / "rules.toml",
        FAST_RETRIES + f'[[forwarding.rules]]\nmodality = "CT"\nto = ["{native_only.address}", '
        f'{{ ae = "{j2k.address}", syntaxes = ["jpeg-2000", "uncompressed"] }}]\n'
        + f'[[forwarding.rules]]\nStudyDescription = "LOSSY OK"\nto = "{lossy.address}"\n'
        'syntaxes = ["jpeg-ls-near"]\nlossy = true\nnear = 2\n'
        + '[[forwarding.rules]]\nmodality = "MR"\nto = "NOWHERE@127.0.0.1:9"\n',
    )
    with native_only, j2k, lossy:
        node = node_factory(config=config)
        plain = study(2, seed=40)
        marked = study(2, seed=41)
        for ds in marked:
            ds.StudyDescription = "LOSSY OK"
        assert send_datasets(node.port, plain + marked) == [Status.SUCCESS] * 4
        wait_for(lambda: len(native_only.arrivals) == 4 and len(j2k.arrivals) == 4)
        wait_for(lambda: len(lossy.arrivals) == 2, what="lossy derivatives")
        originals = {str(ds.SOPInstanceUID): ds for ds in plain + marked}
        for a in native_only.arrivals:
            assert a.transfer_syntax in UNCOMPRESSED and a.calling_ae == "COMPACS"
            assert np.array_equal(pixels(a.dataset), originals[a.sop_instance_uid].pixel_array)
        for a in j2k.arrivals:
            assert a.transfer_syntax == J2K
            assert np.array_equal(pixels(a.dataset), originals[a.sop_instance_uid].pixel_array)
        for a in lossy.arrivals:
            ds = a.dataset
            source = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
            assert a.sop_instance_uid not in originals and source in originals
            assert ds.LossyImageCompression == "01" and ds.ImageType[0] == "DERIVED"
            error = np.abs(pixels(ds).astype(int) - originals[source].pixel_array.astype(int))
            assert 0 < error.max() <= 2
        # the MR rule did not match: nothing queued for NOWHERE
        assert all(i["destination"] != "NOWHERE@127.0.0.1:9" for i in queue(node, "--all"))


def test_a_lossy_syntax_needs_lossy_true(tmp_path):
    config = write_config(
        tmp_path / "bad.toml",
        '[[forwarding.rules]]\nto = "X@127.0.0.1:104"\nsyntaxes = ["jpeg-baseline"]\n',
    )
    result = run_cli("serve", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "forwarding.rules" in result.stderr and "lossy = true" in result.stderr


def test_forward_by_hand_and_delete(node_factory, tmp_path):
    series = study(3, seed=50)
    other = study(2, seed=51)
    node = node_factory()
    assert send_datasets(node.port, series + other) == [Status.SUCCESS] * 5
    study_uid = str(series[0].StudyInstanceUID)
    with Destination("LATER") as dest:
        result = node.cli("forward", "--study", study_uid, "--to", dest.address)
        assert result.returncode == 0 and "queued 3 instance(s)" in result.stdout
        wait_for(lambda: len(dest.uids()) == 3, what="hand-forwarded study")
    assert sorted(dest.uids()) == sorted(str(ds.SOPInstanceUID) for ds in series)
    assert node.cli("forward", "--study", "1.2.3.4", "--to", dest.address).returncode == 1
    assert node.cli("forward", "--study", study_uid, "--to", "UNKNOWN").returncode == 2

    before = {p for p in (node.data_dir / "store").rglob("*.dcm")}
    series_uid = str(series[0].SeriesInstanceUID)
    result = node.cli("delete", "--series", series_uid, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would delete 3 instance(s) of 1 study(ies)" in result.stdout
    # no terminal and no --yes: refused, nothing gone
    result = node.cli("delete", "--series", series_uid)
    assert result.returncode == 2 and "give --yes" in result.stderr
    assert {p for p in (node.data_dir / "store").rglob("*.dcm")} == before
    result = node.cli("delete", "--series", series_uid, "--yes")
    assert result.returncode == 0 and "deleted 3 instance(s)" in result.stdout
    # logged by UIDs, never by the patient's name or ID
    for ds in series:
        assert f"deleted instance {ds.SOPInstanceUID} of study {study_uid}" in result.stderr
        assert str(ds.PatientName) not in result.stderr and str(ds.PatientID) not in result.stderr
    after = {p for p in (node.data_dir / "store").rglob("*.dcm")}
    assert len(before - after) == 3 and len(after) == 2
    stats = node.stats()
    assert stats["instances"] == 2 and stats["studies"] == 1


def test_retention_deletes_forwarded_instances_locally(node_factory, tmp_path):
    with Destination("PACS") as dest:
        config = write_config(
            tmp_path / "gateway.toml",
            f'[[forwarding.rules]]\nto = "{dest.address}"\nretain_days = 0\n',
        )
        node = node_factory(config=config)
        series = study(5, seed=60)
        assert send_datasets(node.port, series) == [Status.SUCCESS] * 5
        wait_for(lambda: len(dest.uids()) == 5, what="delivery")
        wait_for(lambda: node.stats()["instances"] == 0, what="local deletion")
    assert list((node.data_dir / "store").rglob("*.dcm")) == []


def test_bytes_on_the_wire_compressed_versus_uncompressed(node_factory, tmp_path):
    series = list(ct_series(20, seed=70))  # 512 x 512, 12 bits
    wire = {}
    for name, syntaxes in (("jpeg-ls", '["stored"]'), ("uncompressed", '["uncompressed"]')):
        with Destination(f"W{name[:3].upper()}") as dest:
            proxy = CountingProxy(dest.port)
            config = write_config(
                tmp_path / f"{name}.toml",
                f'[[forwarding.rules]]\nto = "{dest.aet}@127.0.0.1:{proxy.port}"\n'
                f"syntaxes = {syntaxes}\n",
            )
            node = node_factory(name, config=config)
            assert send_datasets(node.port, series) == [Status.SUCCESS] * 20
            wait_for(lambda d=dest: len(d.uids()) == 20, what=f"{name} delivery")
            wait_for(lambda n=node: len(queue(n)) == 0)
            proxy.close()
            wire[name] = proxy.sent
    saving = 1 - wire["jpeg-ls"] / wire["uncompressed"]
    print(
        f"\nbytes on the wire, 20 CT slices: JPEG-LS {wire['jpeg-ls']:,}, "
        f"uncompressed {wire['uncompressed']:,} (saved {saving:.0%})"
    )
    assert wire["jpeg-ls"] < 0.5 * wire["uncompressed"]


def _page(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return response.read().decode()


def test_a_failure_the_retry_queue_delivered_is_no_longer_shown(node_factory, tmp_path):
    """The destination is down: the dashboard, the API and `compacs stats` show the failed
    attempts. Once it is up and the retry queue has delivered, none of them shows the
    error any more (it was the items' state, and delivery cleared it); the destination has
    the objects, pixels as sent (read by pydicom's own decoders)."""
    dest = Destination("PACS")
    http_port = free_port()
    config = write_config(tmp_path / "fwd.toml", FAST_RETRIES)
    node = node_factory(
        config=config, extra_args=("--forward", dest.address, "--http-port", str(http_port))
    )
    sent = study(2, seed=40)
    assert send_datasets(node.port, sent) == [Status.SUCCESS] * 2
    error = f"no association with {dest.address}"
    wait_for(lambda: error in _page(http_port, "/"), what="the error on the dashboard")
    assert error in _page(http_port, "/api/stats")
    stats_while_down = node.cli("stats").stdout

    with dest:
        wait_for(lambda: len(queue(node)) == 0, what="queue drained")
        arrivals = list(dest.arrivals)
    assert error not in _page(http_port, "/")
    assert error not in _page(http_port, "/api/stats")
    assert json.loads(_page(http_port, "/api/stats"))["forwarding_problems"] == {}
    stats = node.cli("stats")
    assert stats.returncode == 0 and error not in stats.stdout
    assert error in stats_while_down  # it was shown while it lasted
    assert sorted(a.sop_instance_uid for a in arrivals) == sorted(
        str(ds.SOPInstanceUID) for ds in sent
    )
    by_uid = {a.sop_instance_uid: a.dataset for a in arrivals}
    for ds in sent:
        got = by_uid[str(ds.SOPInstanceUID)]
        assert np.array_equal(got.pixel_array, ds.pixel_array)
