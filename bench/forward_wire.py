"""Bytes on the wire when compacs forwards a 200-slice CT series, compressed or not.

A compacs gateway forwards the generated series to DCMTK ``storescp`` through a TCP
relay that counts what compacs sends (PDUs and all), once with the default syntaxes
(the stored JPEG-LS first) and once offering only uncompressed syntaxes; then checks
that storescp holds every instance, pixels bit-exact.

    cd bench && PYTHONPATH=.. ../.venv/bin/python forward_wire.py [--slices 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from tests.support.proxy import CountingProxy  # the repository root is on PYTHONPATH (Makefile)
from tests.support.scu import send_datasets

from compacs.codecs.transcode import decompress
from compacs.synthetic import ct_series
from peers import Compacs, StoreSCP

OFFERS = {"compressed (stored JPEG-LS)": '["stored"]', "uncompressed": '["uncompressed"]'}


def delivered(node: Compacs, count: int) -> bool:
    return sum(e.get("done", 0) for e in node.stats()["forwarding"].values()) >= count


def forward_once(work: Path, series: list, offer: str) -> tuple[int, float, bool]:
    """(bytes compacs sent, seconds from first C-STORE to all delivered, bit-exact)."""
    dest = StoreSCP(work / "dest", aet="PACS", accept_all=True, fork=False)
    dest.start()
    proxy = CountingProxy(dest.port)
    node = Compacs(
        work / "gateway",
        config=f'[[forwarding.rules]]\nto = "PACS@127.0.0.1:{proxy.port}"\nsyntaxes = {offer}\n',
    )
    node.start()
    try:
        start = time.monotonic()
        send_datasets(node.port, series)
        deadline = start + 600  # bounded: 10 minutes at most
        while not delivered(node, len(series)) and time.monotonic() < deadline:
            time.sleep(0.05)
        seconds = time.monotonic() - start
        originals = {str(ds.SOPInstanceUID): ds.pixel_array for ds in series}
        exact = len(dest.files()) == len(series)
        for path in dest.files():
            ds = pydicom.dcmread(path)
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds = decompress(ds)
            exact &= np.array_equal(ds.pixel_array, originals[str(ds.SOPInstanceUID)])
        return proxy.sent, seconds, exact
    finally:
        node.stop()
        proxy.close()
        dest.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    args = parser.parse_args()
    series = list(ct_series(args.slices, seed=2026))
    native = sum(len(ds.PixelData) for ds in series)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, (name, offer) in enumerate(OFFERS.items()):
            results[name] = forward_once(Path(tmp) / str(n), series, offer)
    size = f"{native / 2**20:.1f} MiB of pixels"
    print(f"\nforwarding a {args.slices}-slice 512x512 CT series ({size})")
    print("| forwarded as | bytes on the wire | seconds | bit-exact |")
    print("|---|---|---|---|")
    for name, (sent, seconds, exact) in results.items():
        print(f"| {name} | {sent:,} | {seconds:.1f} | {'yes' if exact else 'NO'} |")
    compressed, plain = (results[name][0] for name in OFFERS)
    print(f"\nsaved on the link: {1 - compressed / plain:.1%} (x{plain / compressed:.2f})")
    return 0 if all(r[2] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
