"""Charts drawn on the server as inline SVG: readable without JavaScript, no library, no CDN.
Each chart has a title and a description for screen readers; the numbers themselves are in
the table the page puts beside it, so the chart is never the only way to read them."""
from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 10, 12, 34
COLORS = {
    "completed": "#1d7a3a", "failed": "#b3261e", "cancelled": "#9a6200", "running": "#2457c5", "queued": "#7a8aa3", "waiting": "#b9c3d3",
    "created": "#1d7a3a", "updated": "#2457c5", "deleted": "#b3261e", "skipped": "#9a6200",
    "p50": "#2457c5", "p95": "#b3261e", "success_rate": "#1d7a3a", "retries": "#9a6200", "seconds": "#5a3fc0",
    "enqueued": "#1d7a3a", "ignored": "#7a8aa3", "received": "#2457c5", "dispatching": "#5a3fc0",
    "done": "#1d7a3a", "dead": "#b3261e", "pending": "#2457c5", "processing": "#5a3fc0",
}


def _nice_max(value):
    if value <= 0:
        return 1
    for step in (1, 2, 2.5, 5, 10):
        magnitude = 10 ** (len(str(int(value))) - 1)
        if value <= step * magnitude:
            return step * magnitude
    return value


def _fmt(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def _frame(chart_id, title, description, body, max_value, labels, keys, unit=""):
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    grid = []
    for i in range(5):
        value = max_value * i / 4
        y = TOP + plot_h - plot_h * i / 4
        grid.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                    f'<text x="{LEFT - 4}" y="{y + 4:.1f}" class="axis" text-anchor="end">{escape(_fmt(round(value, 2)))}{unit}</text>')
    ticks = []
    if labels:
        n = len(labels)
        for i in sorted({0, n // 2, n - 1}):
            x = LEFT + plot_w * (i + 0.5) / n
            anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
            x = LEFT if anchor == "start" else WIDTH - RIGHT if anchor == "end" else x
            ticks.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" class="axis" text-anchor="{anchor}">{escape(labels[i])}</text>')
    legend = []
    x = LEFT
    for key in keys:
        legend.append(f'<rect x="{x}" y="{HEIGHT - 12}" width="10" height="10" fill="{COLORS.get(key, "#555")}"/>'
                      f'<text x="{x + 14}" y="{HEIGHT - 3}" class="legend">{escape(key.replace("_", " "))}</text>')
        x += 24 + 7 * len(key)
    return Markup(  # noqa: S704  every text inside is escape()d above; the rest is numbers and constants
        f'<svg class="chart" id="{chart_id}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" preserveAspectRatio="xMidYMid meet">'
        f'<title id="{chart_id}-title">{escape(title)}</title><desc id="{chart_id}-desc">{escape(description)}</desc>'
        + "".join(grid) + body + "".join(ticks) + "".join(legend) + "</svg>")


def stacked_bars(chart_id, title, description, labels, rows, keys):
    """rows: one {key: number} per label, stacked in the order of keys."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    max_value = _nice_max(max((sum(row.get(k) or 0 for k in keys) for row in rows), default=0))
    n = max(len(rows), 1)
    bar_w = plot_w / n
    bars = []
    for i, row in enumerate(rows):
        y = TOP + plot_h
        for key in keys:
            value = row.get(key) or 0
            if not value:
                continue
            h = plot_h * value / max_value
            y -= h
            bars.append(f'<rect x="{LEFT + i * bar_w + bar_w * 0.1:.1f}" y="{y:.1f}" width="{bar_w * 0.8:.1f}" '
                        f'height="{h:.1f}" fill="{COLORS.get(key, "#555")}" data-key="{key}" data-value="{_fmt(value)}">'
                        f'<title>{escape(labels[i])}: {escape(_fmt(value))} {escape(key)}</title></rect>')
    return _frame(chart_id, title, description, "".join(bars), max_value, labels, keys)


def lines(chart_id, title, description, labels, rows, keys, unit="", max_value=None):
    """rows: one {key: number or None} per label; None leaves a gap in the line."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    values = [row.get(k) for row in rows for k in keys if row.get(k) is not None]
    max_value = max_value or _nice_max(max(values, default=0))
    n = max(len(rows), 1)
    paths = []
    for key in keys:
        segments, current = [], []
        for i, row in enumerate(rows):
            value = row.get(key)
            if value is None:
                if current:
                    segments.append(current)
                current = []
                continue
            current.append((LEFT + plot_w * (i + 0.5) / n, TOP + plot_h - plot_h * min(value, max_value) / max_value))
        if current:
            segments.append(current)
        for points in segments:
            if len(points) == 1:
                x, y = points[0]
                paths.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{COLORS.get(key, "#555")}" data-key="{key}"/>')
            else:
                d = " ".join(f"{'M' if j == 0 else 'L'}{x:.1f},{y:.1f}" for j, (x, y) in enumerate(points))
                paths.append(f'<path d="{d}" fill="none" stroke="{COLORS.get(key, "#555")}" stroke-width="2" data-key="{key}"/>')
    return _frame(chart_id, title, description, "".join(paths), max_value, labels, keys, unit)
