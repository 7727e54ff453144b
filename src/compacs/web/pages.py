"""Server-rendered HTML pages: dashboard, studies, a study, an instance. No script.

Each page renders the same document the JSON API returns; every value is escaped.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from compacs.index.forward_state import WAITING
from compacs.units import size
from compacs.web.charts import ratio_over_time, stored_vs_received

THUMBNAILS_PER_SERIES = 24  # on the study page; the series page has them all
INSTANCES_PER_PAGE = 100
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header b{font-size:17px}
main{padding:16px 20px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;background:#fff;margin-bottom:8px}
td,th{border-bottom:1px solid #e3e6eb;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.n{text-align:right}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;padding:8px 14px;
border-radius:6px;min-width:130px}.card b{display:block;font-size:19px}
.charts{display:flex;flex-wrap:wrap;gap:24px}.chart{background:#fff;padding:6px}
.chart .title{font-weight:600;font-size:13px}.chart .label,.chart .value{font-size:12px}
.chart .small{font-size:10px}.received{fill:#b9cdf0}.stored{fill:#2d5fb8}
.axis{stroke:#888}.unity{stroke:#c33;stroke-dasharray:3 3}
.thumbs{display:flex;flex-wrap:wrap;gap:6px}.thumbs a{background:#000;display:block;
width:128px;height:128px;text-align:center}.thumbs img{max-width:128px;max-height:128px}
.viewer img{background:#000;max-width:100%}.empty,.muted{color:#777}
form.search{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin-bottom:10px}
form label{display:flex;flex-direction:column;font-size:12px}.err{color:#a11}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)} - compacs</title><style>{STYLE}</style></head><body>"
        '<header><b>compacs</b><a href="/">Dashboard</a><a href="/studies">Studies</a>'
        '<a href="/api/openapi.json">API</a></header>'
        f"<main>{body}</main></body></html>"
    )


def _v(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _date(value: Any) -> str:
    text = "" if value is None else str(value)
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _name(value: Any) -> str:
    return _v(str(value).replace("^", " ").strip()) if value else ""


def error(status: int, message: str) -> str:
    return _page(f"Error {status}", f'<h1>Error {status}</h1><p class="err">{escape(message)}</p>')


def dashboard(stats: dict[str, Any]) -> str:
    saved = stats["bytes_received"] - stats["bytes_stored"]
    forwarding = stats.get("forwarding", {})
    waiting = sum(
        n for entry in forwarding.values() for state, n in entry.items() if state in WAITING
    )
    cards = [
        ("Studies", f"{stats['studies']}"),
        ("Instances", f"{stats['instances']}"),
        ("Received", size(stats["bytes_received"])),
        ("Stored", size(stats["bytes_stored"])),
        ("Saved", size(saved)),
        ("Ratio", f"x{stats['ratio']:.2f}"),
        ("Compression queue", f"{stats['pending']}"),
        ("Forwarding queue", f"{waiting}"),
    ]
    card_html = "".join(
        f'<div class="card" data-card="{escape(k)}">{escape(k)}<b>{escape(v)}</b></div>'
        for k, v in cards
    )
    modality = [
        (m, e["bytes_received"], e["bytes_stored"]) for m, e in stats["by_modality"].items()
    ]
    codec = [
        (e["name"], e["bytes_received"], e["bytes_stored"])
        for e in stats["by_transfer_syntax"].values()
    ]
    per_day = [(d["day"], d["ratio"]) for d in stats.get("per_day", [])]
    charts = (
        stored_vs_received(modality, "Bytes received vs stored, per modality")
        + stored_vs_received(codec, "Bytes received vs stored, per stored syntax")
        + ratio_over_time(per_day, "Compression ratio per day of receipt")
    )
    assoc_rows = [
        [
            _v(a["started"]),
            _v(a["calling_ae"]),
            _v(a["address"]),
            _v(", ".join(f"{op} x{n}" for op, n in a["operations"].items()) or "-"),
            _v(a["failures"]),
            _v(a["status"]),
        ]
        for a in stats.get("associations", [])
    ]
    problem_rows = [
        [
            _v(destination),
            _v(e["items"]),
            _v(e["error"]),
            _v(e["last_attempt"]),
        ]
        for destination, entry in stats.get("forwarding_problems", {}).items()
        for e in entry["errors"]
    ]
    error_rows = [
        [
            _v(e["time"]),
            _v(e.get("calling_ae") or e.get("logger", "")),
            _v(e.get("operation", "")),
            _v(e["status"]),
            _v(e["message"]),
        ]
        for e in stats.get("errors", [])
    ]
    body = (
        f'<h1>Dashboard</h1><div class="cards">{card_html}</div>'
        f'<h2>Savings</h2><div class="charts">{charts}</div>'
        + _savings_table(stats)
        + "<h2>Recent associations</h2>"
        + (
            _table(
                ["started", "calling AE", "address", "operations", "failures", "status"],
                assoc_rows,
                "associations",
            )
            if assoc_rows
            else '<p class="empty">none since the node started</p>'
        )
        + "<h2>Forwarding problems</h2>"
        + (
            _table(
                ["destination", "items waiting", "last attempt's error", "last attempt"],
                problem_rows,
                "forwarding-problems",
            )
            if problem_rows
            else '<p class="empty">none: every item due was delivered</p>'
        )
        + "<h2>Recent errors</h2>"
        + (
            _table(["time", "who", "operation", "status", "message"], error_rows, "errors")
            if error_rows
            else '<p class="empty">none since the node started</p>'
        )
    )
    return _page("Dashboard", body)


SEARCH_FIELDS = (
    ("PatientName", "Patient name", "DOE*"),
    ("PatientID", "Patient ID", ""),
    ("StudyDate", "Study date", "20200101-20201231"),
    ("AccessionNumber", "Accession", ""),
    ("ModalitiesInStudy", "Modality", "CT"),
    ("StudyDescription", "Description", "*CHEST*"),
)


SAVINGS_GROUPS: tuple[tuple[str, str, Callable[[str, dict[str, Any]], str]], ...] = (
    ("codec", "by_transfer_syntax", lambda key, e: e["name"]),
    ("modality", "by_modality", lambda key, e: key),
    ("tier", "by_tier", lambda key, e: key),
)
"""The dashboard's savings rows: stats key and label per grouping (issue 16)."""


def _savings_table(stats: dict[str, Any]) -> str:
    """Bytes received, stored and saved per codec (stored transfer syntax), modality and
    tier: the rows of ``index.storage_groups()`` summed in ``stats()``."""
    rows = [
        [
            _v(group),
            _v(label(key, e)),
            _v(e["instances"]),
            _v(size(e["bytes_received"])),
            _v(size(e["bytes_stored"])),
            _v(size(e["bytes_saved"])),
            _v(f"x{e['ratio']:.2f}"),
        ]
        for group, stats_key, label in SAVINGS_GROUPS
        for key, e in stats.get(stats_key, {}).items()
    ]
    headers = ["per", "", "instances", "received", "stored", "saved", "ratio"]
    return "<h2>Bytes per codec, modality and tier</h2>" + (
        _table(headers, rows, "savings") if rows else '<p class="empty">nothing stored</p>'
    )


def studies(page: dict[str, Any], params: list[tuple[str, str]]) -> str:
    given = dict(params)
    inputs = "".join(
        f'<label>{escape(label)}<input name="{key}" value="{_v(given.get(key, ""))}" '
        f'placeholder="{escape(hint)}"></label>'
        for key, label, hint in SEARCH_FIELDS
    )
    form = (
        f'<form class="search" method="get" action="/studies">{inputs}'
        "<button>Search</button></form>"
    )
    rows = [
        [
            f'<a href="/studies/{quote(s["StudyInstanceUID"])}">'
            f"{_name(s.get('PatientName')) or '(no name)'}</a>",
            _v(s.get("PatientID")),
            _v(_date(s.get("StudyDate"))),
            _v(s.get("StudyDescription")),
            _v(s.get("ModalitiesInStudy")),
            _v(s.get("AccessionNumber")),
            _v(s.get("NumberOfStudyRelatedSeries")),
            _v(s.get("NumberOfStudyRelatedInstances")),
        ]
        for s in page["items"]
    ]
    table = (
        _table(
            [
                "patient",
                "patient ID",
                "date",
                "description",
                "modalities",
                "accession",
                "series",
                "instances",
            ],
            rows,
            "studies",
        )
        if rows
        else '<p class="empty">no study matches</p>'
    )
    nav = ""
    base = [(k, v) for k, v in params if k not in ("offset", "limit")]
    if page["offset"]:
        prev = max(page["offset"] - page["limit"], 0)
        nav += f'<a href="/studies?{escape(urlencode([*base, ("offset", prev)]))}">previous</a> '
    if page["more"]:
        nxt = page["offset"] + page["limit"]
        nav += f'<a href="/studies?{escape(urlencode([*base, ("offset", nxt)]))}">next</a>'
    return _page("Studies", f"<h1>Studies</h1>{form}{table}<p>{nav}</p>")


def _sizes(sizes: dict[str, Any]) -> str:
    syntaxes = ", ".join(
        f"{escape(e['name'])} ({e['instances']})" for e in sizes["by_transfer_syntax"].values()
    )
    return (
        f"<p>{sizes['instances']} instance(s): received {size(sizes['bytes_received'])}, "
        f"stored {size(sizes['bytes_stored'])} (x{sizes['ratio']:.2f}); stored as {syntaxes}</p>"
    )


def study(doc: dict[str, Any]) -> str:
    facts = _table(
        ["patient", "patient ID", "birth date", "sex", "study date", "description", "accession"],
        [
            [
                _name(doc.get("PatientName")),
                _v(doc.get("PatientID")),
                _v(_date(doc.get("PatientBirthDate"))),
                _v(doc.get("PatientSex")),
                _v(_date(doc.get("StudyDate"))),
                _v(doc.get("StudyDescription")),
                _v(doc.get("AccessionNumber")),
            ]
        ],
    )
    parts = [
        f"<h1>Study {_v(doc.get('StudyDescription') or doc['StudyInstanceUID'])}</h1>",
        facts,
        _sizes(doc["sizes"]),
    ]
    if doc.get("viewer_url"):
        parts.insert(
            1, f'<p><a class="viewer" href="{_v(doc["viewer_url"])}">open in viewer</a></p>'
        )
    for series in doc["series"]:
        instances = series["instances"]
        more = len(instances) - THUMBNAILS_PER_SERIES
        everything = f"/series/{quote(series['SeriesInstanceUID'])}"
        parts.append(
            f'<section class="series" data-series="{_v(series["SeriesInstanceUID"])}">'
            f"<h2>{_series_title(series)} "
            f'<a class="muted" href="{everything}">({len(instances)} instance(s))</a></h2>'
            f'<div class="thumbs">{_thumbnails(instances[:THUMBNAILS_PER_SERIES])}</div>'
            + (
                f'<p><a class="all" href="{everything}">all {len(instances)} instances '
                f"({more} more)</a></p>"
                if more > 0
                else ""
            )
            + "</section>"
        )
    return _page("Study", "".join(parts))


def _series_title(series: dict[str, Any]) -> str:
    return (
        f"Series {_v(series.get('SeriesNumber'))} {_v(series.get('Modality'))} "
        f"{_v(series.get('SeriesDescription'))}"
    )


def _thumbnails(instances: list[dict[str, Any]]) -> str:
    """A linked thumbnail per instance (each opens the instance page)."""
    return "".join(
        f'<a href="/instances/{quote(i["SOPInstanceUID"])}" title="instance '
        f'{_v(i.get("InstanceNumber"))}"><img class="thumb" loading="lazy" alt="instance '
        f'{_v(i.get("InstanceNumber"))}" src="/api/instances/{quote(i["SOPInstanceUID"])}'
        '/preview.png?size=128"></a>'
        for i in instances
    )


def series(doc: dict[str, Any], offset: int, limit: int) -> str:
    """Every instance of a series, ``limit`` thumbnails a page, with previous/next links."""
    instances = doc["instances"]
    shown = instances[offset : offset + limit]
    here = f"/series/{quote(doc['SeriesInstanceUID'])}"
    nav = []
    if offset > 0:
        back = urlencode({"offset": max(offset - limit, 0), "limit": limit})
        nav.append(f'<a class="previous" href="{here}?{escape(back)}">previous</a>')
    if offset + limit < len(instances):
        ahead = urlencode({"offset": offset + limit, "limit": limit})
        nav.append(f'<a class="next" href="{here}?{escape(ahead)}">next</a>')
    first, last = (offset + 1, offset + len(shown)) if shown else (0, 0)
    study_uid = doc.get("StudyInstanceUID", "")
    body = (
        f"<h1>{_series_title(doc)}</h1>"
        f'<p><a href="/studies/{quote(study_uid)}">back to the study</a> · '
        f"instances {first}-{last} of {len(instances)}</p>"
        f'<div class="thumbs">{_thumbnails(shown)}</div><p>{" ".join(nav)}</p>'
    )
    return _page("Series", body)


def instance(doc: dict[str, Any], params: list[tuple[str, str]]) -> str:
    uid = doc["SOPInstanceUID"]
    given = {k: v for k, v in params if k in ("wc", "ww", "frame") and v}
    src = f"/api/instances/{quote(uid)}/preview.png"
    if given:
        src += "?" + urlencode(given)
    frames = doc.get("NumberOfFrames") or 1
    form = (
        '<form class="search" method="get">'
        f'<label>frame (1-{_v(frames)})<input name="frame" value="{_v(given.get("frame", ""))}">'
        f'</label><label>window centre<input name="wc" value="{_v(given.get("wc", ""))}"></label>'
        f'<label>window width<input name="ww" value="{_v(given.get("ww", ""))}"></label>'
        "<button>Show</button></form>"
    )
    keys = [k for k in doc if k[:1].isupper()]
    attributes = _table(["attribute", "value"], [[escape(k), _v(doc[k])] for k in keys])
    storage = _table(
        ["", "value"],
        [
            ["received as", _v(doc["transfer_syntax_received"]["name"])],
            ["stored as", _v(doc["transfer_syntax_stored"]["name"])],
            ["bytes received", _v(doc["bytes_received"])],
            ["bytes stored", _v(doc["bytes_stored"])],
            ["ratio", _v(doc["ratio"])],
            ["compression", _v(doc["compression"]["state"])],
            ["compression note", _v(doc["compression"]["note"])],
            ["from", _v(doc.get("calling_ae"))],
            ["received at", _v(doc.get("received_at"))],
            ["SHA-256", _v(doc["sha256"])],
        ],
    )
    study_uid = doc.get("StudyInstanceUID", "")
    body = (
        f"<h1>Instance {_v(doc.get('InstanceNumber'))}</h1>"
        f'<p><a href="/studies/{quote(study_uid)}">back to the study</a> · '
        f'<a href="/api/instances/{quote(uid)}/file">download as stored</a> · '
        f'<a href="/api/instances/{quote(uid)}/file?transfer_syntax=1.2.840.10008.1.2.1">'
        "download uncompressed</a></p>"
        f'{form}<div class="viewer"><img id="preview" alt="preview" src="{escape(src)}"></div>'
        f"<h2>Storage</h2>{storage}<h2>Indexed attributes</h2>{attributes}"
    )
    return _page("Instance", body)
