"""Time to first image and to a whole 200-slice CT series in OHIF served by compacs (issue 17).

One node (``[viewer] port``), two generated 200-slice 512x512 CT series
(``compacs.synthetic.ct_series``), one stored JPEG-LS (the default policy) and one HTJ2K (a
rule on the calling AE). Each run opens ``/viewer?StudyInstanceUIDs=...`` in a fresh
headless chromium context (no cache) and reports, from the navigation's start:

- first image: the cornerstone canvas first shows an image (more than 16 distinct colours,
  read back from the canvas every 50 ms);
- whole series: the 200th distinct frame answered 200 (Playwright's response events).

Measured, never asserted. Run from bench/: ``PYTHONPATH=.. ../.venv/bin/python
ohif_timing.py [--runs N]`` or ``make bench-ohif`` (needs ``make ohif``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.support.node import NodeProcess, free_port, write_config
from tests.support.scu import send_datasets

from compacs.synthetic import ct_series
from compacs.web.viewer import DEFAULT_DIR

CHROMIUM = "/usr/lib/chromium/chromium"
SLICES = 200
TIMEOUT = 180.0
SERIES = {  # label -> (calling AE, patient ID)
    "JPEG-LS (default)": ("STORESCU", "BENCH-JLS"),
    "HTJ2K": ("TO_HTJ2K", "BENCH-HTJ2K"),
}
CANVAS_DISTINCT = """(canvas) => {
  const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const seen = new Set();
  for (let i = 0; i < d.length; i += 16) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  return seen.size;
}"""


def store(port: int) -> dict[str, str]:
    """The two series stored; label -> Study Instance UID."""
    studies = {}
    for label, (calling, patient_id) in SERIES.items():
        datasets = list(ct_series(SLICES, patient_id=patient_id, patient_name=f"Bench^{label}"))
        for start in range(0, SLICES, 50):
            statuses = send_datasets(port, datasets[start : start + 50], calling=calling)
            assert statuses == [0] * len(statuses), statuses
        studies[label] = str(datasets[0].StudyInstanceUID)
    return studies


def one_run(browser, url: str) -> tuple[float, float, int]:
    """(seconds to first image, seconds to the whole series, frames fetched)."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": "bench", "password": "bench-password"},
    )
    # the user has confirmed OHIF's investigational-use notice for this session
    context.add_init_script("sessionStorage.setItem('investigationalUseDialog', 'hidden')")
    page = context.new_page()
    frames: set[str] = set()
    done: dict[str, float] = {}

    def on_response(response) -> None:
        if "/frames/" in response.url and response.status == 200:
            frames.add(response.url)
            if len(frames) >= SLICES and "all" not in done:
                done["all"] = time.monotonic()

    page.on("response", on_response)
    start = time.monotonic()
    page.goto(url)
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="attached", timeout=TIMEOUT * 1000)
    first = float("nan")
    while time.monotonic() - start < TIMEOUT:
        if canvas.evaluate(CANVAS_DISTINCT) > 16:
            first = time.monotonic() - start
            break
        page.wait_for_timeout(50)
    while "all" not in done and time.monotonic() - start < TIMEOUT:
        page.wait_for_timeout(100)
    whole = done["all"] - start if "all" in done else float("nan")
    context.close()
    return first, whole, len(frames)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not (DEFAULT_DIR / "index.html").is_file():
        print(f"no OHIF build in {DEFAULT_DIR}: run `make ohif`", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        http, viewer = free_port(), free_port()
        config = write_config(
            Path(tmp) / "node.toml",
            f'[http]\nport = {http}\nuser = "bench"\npassword = "bench-password"\n'
            f'[viewer]\nport = {viewer}\n[compression]\nwhen = "ingest"\n'
            '[[compression.rules]]\ncalling_ae = "TO_HTJ2K"\naction = "htj2k"\n'
            '[[compression.rules]]\naction = "jpeg-ls"\n',
        )
        args_ = ("--http-port", str(http), "--viewer-port", str(viewer))
        node = NodeProcess(Path(tmp) / "data", config=config, extra_args=args_).start()
        try:
            studies = store(node.port)
            rows = []
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM,
                    args=["--no-sandbox", "--headless=new", "--disable-gpu", "--no-first-run"],
                )
                for label, uid in studies.items():
                    url = f"http://127.0.0.1:{viewer}/viewer?StudyInstanceUIDs={uid}"
                    runs = [one_run(browser, url) for _ in range(args.runs)]
                    rows.append((label, runs))
                browser.close()
        finally:
            node.stop()
    print(f"\nOHIF {DEFAULT_DIR.name}, {SLICES} slices 512x512 CT, medians of {args.runs} runs\n")
    print("| stored as | first image (s) | whole series (s) | frames fetched |")
    print("|---|---|---|---|")
    for label, runs in rows:
        first = statistics.median(r[0] for r in runs)
        whole = statistics.median(r[1] for r in runs)
        fetched = min(r[2] for r in runs)
        print(f"| {label} | {first:.2f} | {whole:.2f} | {fetched} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
