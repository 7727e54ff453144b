"""Codec table benchmark: ratio, encode/decode MB/s and bit-exactness per lossless codec.

Data: the real images of pydicom-data / pydicom's test files (CT, MR, CR, US RGB,
multi-frame) and a generated 200-slice CT series. One thread per codec, then two threads
on the generated series (does the backend release the GIL?). For HTJ2K Lossless RPCL, how
much of each stream a reader needs for each resolution (its tile-parts, by their lengths).

    .venv/bin/python bench/codec_table.py [--slices 200] [--codecs jpeg-ls,htj2k] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pydicom

from compacs.codecs.decode import source_frames
from compacs.codecs.pixels import PixelInfo
from compacs.codecs.table import CODECS, Codec, CodecUnavailable, codec_for
from compacs.synthetic import ct_series


def by_name(name: str) -> str:
    """A file of pydicom's test files or the pydicom-data package, by name."""
    import data_store
    import pydicom.data

    for folder in (os.path.dirname(pydicom.data.__file__), os.path.dirname(data_store.__file__)):
        for dirpath, _, files in os.walk(folder):
            if name in files:
                return os.path.join(dirpath, name)
    raise FileNotFoundError(name)


REAL = {
    "CT + MR small (CT_small 128x128, MR_small 64x64, signed 16)": ["CT_small.dcm", "MR_small.dcm"],
    "CT (pydicom-data 693, signed 16)": ["693_UNCR.dcm"],
    "MR (MR2, 1024x1024)": ["MR2_UNCR.dcm"],
    "CR (RG1 1955x1841 + RG3 1760x1760)": ["RG1_UNCR.dcm", "RG3_UNCR.dcm"],
    "US RGB (US1, 640x480x3)": ["US1_UNCR.dcm"],
    "US multi-frame RGB (OBXXXX1A, 2 frames)": ["OBXXXX1A_2frame.dcm"],
    "MR small set (emri, 10 frames signed)": ["emri_small.dcm"],
}


@dataclass
class Frames:
    label: str
    frames: list[tuple[np.ndarray, PixelInfo]]

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f, _ in self.frames)


def frames_of(datasets: Iterable[pydicom.Dataset]) -> list[tuple[np.ndarray, PixelInfo]]:
    out = []
    for ds in datasets:
        info = PixelInfo.of(ds)
        out += [(f, info) for f in source_frames(ds, info)]
    return out


def measure(codec: Codec, data: Frames) -> dict | None:
    try:
        for _, info in data.frames[:1]:
            codec.check(info)
    except CodecUnavailable:
        return None
    start = time.perf_counter()
    encoded = [codec.encode(f, info, {}) for f, info in data.frames]
    t_enc = time.perf_counter() - start
    start = time.perf_counter()
    decoded = [codec.decode(e, info) for e, (_, info) in zip(encoded, data.frames, strict=True)]
    t_dec = time.perf_counter() - start
    exact = all(
        np.array_equal(d.reshape(f.shape), f)
        for d, (f, _) in zip(decoded, data.frames, strict=True)
    )
    mb = data.nbytes / 1e6
    return {
        "ratio": data.nbytes / sum(len(e) for e in encoded),
        "enc": mb / t_enc,
        "dec": mb / t_dec,
        "exact": exact,
    }


def two_threads(codec: Codec, data: Frames) -> float:
    """Encode throughput with two threads divided by one thread's."""

    def run(n: int) -> float:
        chunks = [data.frames[i::n] for i in range(n)]
        threads = [
            threading.Thread(target=lambda c=c: [codec.encode(f, i, {}) for f, i in c])
            for c in chunks
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    return run(1) / run(2)


def resolution_prefixes(data: Frames) -> list[float]:
    """Mean share of an HTJ2K Lossless RPCL stream up to the end of resolution r (its
    first r + 1 tile-parts, one per resolution, lowest first): what a progressive reader
    fetches to show that resolution."""
    codec = codec_for("htj2k-rpcl")
    shares = []
    for frame, info in data.frames:
        stream = codec.encode(frame, info, {})
        shares.append([end / len(stream) for end in _tile_part_ends(stream)])
    width = min(len(s) for s in shares)
    return [float(np.mean([s[r] for s in shares])) for r in range(width)]


def _tile_part_ends(stream: bytes) -> list[int]:
    """Where each tile-part ends: the main header's segments by their lengths up to the
    first SOT, then each tile-part by its Psot (ISO 15444-1 A.4.2)."""
    pos = 2  # after SOC
    while struct.unpack_from(">H", stream, pos)[0] != 0xFF90:
        pos += 2 + struct.unpack_from(">H", stream, pos + 2)[0]
    ends = []
    while pos + 10 <= len(stream) and struct.unpack_from(">H", stream, pos)[0] == 0xFF90:
        (psot,) = struct.unpack_from(">I", stream, pos + 6)
        pos = pos + psot if psot else len(stream) - 2
        ends.append(pos)
    return ends


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--codecs", help="comma-separated codec names (default: every lossless)")
    args = parser.parse_args()
    lossless = [c for c in CODECS if c.lossless and c.encodes_pixels]
    if args.codecs:
        lossless = [codec_for(n) for n in args.codecs.split(",")]
    sets = [
        Frames(label, frames_of(pydicom.dcmread(by_name(n)) for n in names))
        for label, names in REAL.items()
    ]
    generated = Frames(
        f"generated CT, {args.slices} x 512x512, 12 bit",
        frames_of(pydicom.dcmread(io.BytesIO(_encode(ds))) for ds in ct_series(args.slices)),
    )
    sets.append(generated)
    lines = [
        "| data | codec | ratio | encode MB/s | decode MB/s | bit-exact |",
        "|---|---|---:|---:|---:|---|",
    ]
    for data in sets:
        for codec in lossless:
            m = measure(codec, data)
            if m is None:
                lines.append(f"| {data.label} | {codec.name} | n/a | | | (cannot carry) |")
                continue
            lines.append(
                f"| {data.label} | {codec.name} | {m['ratio']:.2f} | {m['enc']:.0f} | "
                f"{m['dec']:.0f} | {'yes' if m['exact'] else 'NO'} |"
            )
    lines += ["", "| codec | 2 threads / 1 thread, encode (generated CT) |", "|---|---:|"]
    sample = Frames(generated.label, generated.frames[:40])
    for codec in lossless:
        lines.append(f"| {codec.name} ({codec.backend}) | {two_threads(codec, sample):.2f}x |")
    if codec_for("htj2k-rpcl") in lossless:
        lines += [
            "",
            "| data (htj2k-rpcl) | share of the stream up to resolution 0, 1, ... (lowest first) |",
            "|---|---|",
        ]
        for data in sets:
            shares = " / ".join(f"{100 * s:.1f}%" for s in resolution_prefixes(data))
            lines.append(f"| {data.label} | {shares} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return 0


def _encode(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
