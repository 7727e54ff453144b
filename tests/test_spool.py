"""The local spool in front of S3 (storage/spool, issue 15): one PUT per compressed
instance, nothing acknowledged lost when a node dies before its upload. Real PostgreSQL and
a real S3 server (SeaweedFS); the requests counted on the wire by an HTTP relay; the
objects read back from the bucket by boto3 and decoded by pydicom's own decoders."""

from __future__ import annotations

import signal
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom

from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.support.node import write_config
from tests.support.proxy import HttpRequestCounter
from tests.support.scaleout import node_on, wait_settled
from tests.support.scu import send_datasets


def bucket_objects(s3, store_url: str) -> dict[str, bytes]:
    """Every object under the store URL's prefix, read with boto3 (not compacs)."""
    bucket, prefix = store_url.removeprefix("s3://").split("?")[0].split("/", 1)
    client = s3.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {
        item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for item in listed
        if not item["Key"].endswith("compacs-owner.json")
    }


def wait_for_objects(s3, store_url: str, count: int, timeout: float = 60) -> dict[str, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        objects = bucket_objects(s3, store_url)
        if len(objects) >= count or time.monotonic() > deadline:
            return objects
        time.sleep(0.2)


def pixels_by_uid(objects: dict[str, bytes]) -> dict[str, tuple[str, np.ndarray]]:
    """SOP Instance UID -> (transfer syntax, pixels decoded by pydicom)."""
    out = {}
    for data in objects.values():
        ds = pydicom.dcmread(BytesIO(data))
        out[str(ds.SOPInstanceUID)] = (str(ds.file_meta.TransferSyntaxUID), ds.pixel_array)
    return out


def test_one_put_per_compressed_instance(postgres, s3, tmp_path):
    relay = HttpRequestCounter(s3.port)
    store_url = s3.url().replace(f":{s3.port}", f":{relay.port}")
    index_url = postgres.database()
    node = node_on(tmp_path, "n", index_url, store_url).start()
    series = list(ct_series(12, 96, 96, seed=900, patient_id="SPOOL"))
    try:
        relay.reset()  # what start-up asked (the store's marker) does not count
        assert send_datasets(node.port, series) == [Status.SUCCESS] * 12
        assert wait_settled(index_url, 12)["compression"] == {"compressed": 12}
        objects = wait_for_objects(s3, store_url.replace(f":{relay.port}", f":{s3.port}"), 12)
        requests = dict(relay.requests)
    finally:
        node.stop()
        relay.close()
    print(f"\nS3 requests for 12 instances stored and compressed: {requests}")
    assert requests == {"PUT": 12}  # was PUT 24, GET 12, DELETE 12
    decoded = pixels_by_uid(objects)
    assert set(decoded) == {str(ds.SOPInstanceUID) for ds in series}
    for ds in series:
        syntax, pixels = decoded[str(ds.SOPInstanceUID)]
        assert syntax == "1.2.840.10008.1.2.4.80"  # JPEG-LS Lossless, decoded by pydicom
        assert np.array_equal(pixels, ds.pixel_array)


def test_a_killed_node_uploads_its_spool_when_it_starts_again(postgres, s3, tmp_path):
    """Acknowledged objects still in the spool (held for a compression that has not run)
    when the node is killed: on the node's disk, and in the bucket after its restart."""
    index_url, store_url = postgres.database(), s3.url()
    held = write_config(
        tmp_path / "held.toml",
        "[compression]\ndelay = 3600\n[storage]\nspool_hold_seconds = 3600\n",
    )
    node = node_on(tmp_path, "n", index_url, store_url, "--config", str(held)).start()
    series = list(ct_series(6, 64, 64, seed=901, patient_id="KILLED"))
    try:
        assert send_datasets(node.port, series) == [Status.SUCCESS] * 6
        node.stop(signal.SIGKILL)
        assert bucket_objects(s3, store_url) == {}  # never uploaded: held for compression
        spooled = [p for p in (tmp_path / "n" / "spool").rglob("*.dcm")]
        assert len(spooled) == 6
        quick = write_config(tmp_path / "quick.toml", "[storage]\nspool_hold_seconds = 0\n")
        node = node_on(tmp_path, "n", index_url, store_url, "--config", str(quick)).start()
        objects = wait_for_objects(s3, store_url, 6)
    finally:
        node.stop()
    decoded = pixels_by_uid(objects)
    assert {uid: pixels.tolist() for uid, (_, pixels) in decoded.items()} == {
        str(ds.SOPInstanceUID): ds.pixel_array.tolist() for ds in series
    }
    assert not [p for p in Path(tmp_path / "n" / "spool").rglob("*.dcm")]


def test_the_object_store_away_stores_go_on_into_the_spool(postgres, tmp_path):
    """S3 unreachable: C-STORE still answers Success, because the object is durable in
    the spool (read back by pydicom from the node's disk); the upload is retried and
    logged, and the object waits on disk for the store to come back."""
    from tests.support.node import free_port

    index_url = postgres.database()
    store_url = f"s3://compacs/archive?endpoint=http://127.0.0.1:{free_port()}"  # nobody there
    node = node_on(tmp_path, "n", index_url, store_url).start()
    series = list(ct_series(3, 32, 32, seed=902, patient_id="AWAY"))
    try:
        assert send_datasets(node.port, series) == [Status.SUCCESS] * 3
        deadline = time.monotonic() + 60
        while "upload of" not in node.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "failed, again in" in node.log()
    finally:
        node.stop(signal.SIGKILL)  # what is acknowledged is on disk: no flush needed
    spooled = {}
    for path in (tmp_path / "n" / "spool").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        spooled[str(ds.SOPInstanceUID)] = ds.pixel_array
    # the originals, or their compressed copies: whichever the node made last, bit-exact
    assert {uid: a.tolist() for uid, a in spooled.items()} == {
        str(ds.SOPInstanceUID): ds.pixel_array.tolist() for ds in series
    }
