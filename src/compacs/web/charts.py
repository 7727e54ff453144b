"""Small server-side SVG charts: no script, no network, readable without the page's CSS."""

from __future__ import annotations

from html import escape

from compacs.units import size


def stored_vs_received(rows: list[tuple[str, int, int]], title: str) -> str:
    """Horizontal bars per label: received (light) and stored (dark) bytes, saving noted."""
    if not rows:
        return f'<p class="empty">{escape(title)}: nothing stored yet</p>'
    label_w, bar_w, row_h = 190, 330, 34
    width, height = label_w + bar_w + 150, 28 + row_h * len(rows)
    top = max(max(r, s) for _, r, s in rows) or 1
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="0" y="14" class="title">{escape(title)}</text>',
        f'<text x="{width - 4}" y="14" text-anchor="end" class="label">'
        "light: received, dark: stored</text>",
    ]
    for n, (label, received, stored) in enumerate(rows):
        y = 24 + n * row_h
        rw, sw = bar_w * received / top, bar_w * stored / top
        saved = received - stored
        ratio = received / stored if stored else 1.0
        parts += [
            f'<text x="0" y="{y + 17}" class="label">{escape(label[:28])}</text>',
            f'<rect x="{label_w}" y="{y + 2}" width="{rw:.1f}" height="12" class="received">'
            f"<title>received {size(received)}</title></rect>",
            f'<rect x="{label_w}" y="{y + 15}" width="{sw:.1f}" height="12" class="stored">'
            f"<title>stored {size(stored)}</title></rect>",
            f'<text x="{label_w + bar_w + 8}" y="{y + 17}" class="value">'
            f"{escape(size(saved))} saved, x{ratio:.2f}</text>",
        ]
    parts.append("</svg>")
    return "".join(parts)


def ratio_over_time(points: list[tuple[str, float]], title: str) -> str:
    """Compression ratio per day of receipt, as columns with the value on top."""
    if not points:
        return f'<p class="empty">{escape(title)}: nothing received yet</p>'
    points = points[-30:]
    plot_h, col_w = 140, 36
    width, height = max(300, 40 + col_w * len(points)), plot_h + 60
    top = max(max(r for _, r in points), 1.0) * 1.15  # room for the labels
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="0" y="14" class="title">{escape(title)}</text>',
        f'<line x1="30" y1="{24 + plot_h}" x2="{width}" y2="{24 + plot_h}" class="axis"/>',
    ]
    one = 24 + plot_h - plot_h / top
    parts.append(f'<line x1="30" y1="{one:.1f}" x2="{width}" y2="{one:.1f}" class="unity"/>')
    parts.append(f'<text x="0" y="{one + 4:.1f}" class="label">x1</text>')
    for n, (day, ratio) in enumerate(points):
        x = 34 + n * col_w
        h = plot_h * ratio / top
        y = 24 + plot_h - h
        parts += [
            f'<rect x="{x}" y="{y:.1f}" width="{col_w - 8}" height="{h:.1f}" class="stored">'
            f"<title>{escape(day)}: x{ratio:.2f}</title></rect>",
            f'<text x="{x}" y="{y - 3:.1f}" class="value">{ratio:.2f}</text>',
            f'<text x="{x}" y="{height - 18}" class="label small">{escape(day[5:])}</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)
