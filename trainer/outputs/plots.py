"""Inline SVG charts for report.html: line charts and a heatmap, no plotting library needed."""
import html
from typing import List, Optional, Sequence, Tuple

import numpy as np

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def _ticks(low: float, high: float, count: int = 5) -> List[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** np.floor(np.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    start = np.ceil(low / step) * step
    return [float(v) for v in np.arange(start, high + step * 1e-6, step)]


def _fmt(value: float) -> str:
    value = 0.0 if abs(value) < 1e-12 else value  # No "-0".
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"


def line_chart(title: str, series: Sequence[Tuple[str, Sequence[Tuple[int, float]]]], *,
               marks: Sequence[Tuple[int, str]] = (), best: Optional[Tuple[int, float, str]] = None,
               width: int = 460, height: int = 250, y_label: str = "") -> str:
    """An SVG line chart of (step, value) series; `marks` are vertical lines (phase boundaries),
    `best` a highlighted point (step, value, label)."""
    points = [(s, v) for _, data in series for s, v in data if np.isfinite(v)]
    if not points:
        return f'<p class="note">{html.escape(title)}: nothing logged yet.</p>'
    left, right, top, bottom = 56, 14, 28, 36
    xs = [s for s, _ in points] + [s for s, _ in marks]
    ys = [v for _, v in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or abs(y1) * 0.1 or 1.0
    y0, y1 = y0 - pad, y1 + pad

    def px(step):
        return left + (step - x0) / (x1 - x0) * (width - left - right)

    def py(value):
        return top + (1 - (value - y0) / (y1 - y0)) * (height - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{html.escape(title)}" class="chart">',
           f'<text x="{left}" y="16" class="title">{html.escape(title)}</text>']
    for tick in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{py(tick) + 4:.1f}" class="tick" text-anchor="end">{_fmt(tick)}</text>')
    for tick in _ticks(x0, x1):
        if float(tick).is_integer():
            out.append(f'<text x="{px(tick):.1f}" y="{height - bottom + 14}" class="tick" text-anchor="middle">'
                       f'{int(tick)}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 4}" class="tick" text-anchor="middle">step'
               '</text>')
    if y_label:
        out.append(f'<text x="12" y="{top + (height - top - bottom) / 2}" class="tick" text-anchor="middle" '
                   f'transform="rotate(-90 12 {top + (height - top - bottom) / 2})">{html.escape(y_label)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
               'class="frame"/>')
    for step, label in marks:
        out.append(f'<line x1="{px(step):.1f}" x2="{px(step):.1f}" y1="{top}" y2="{height - bottom}" class="mark"/>'
                   f'<text x="{px(step) + 3:.1f}" y="{top + 10}" class="tick">{html.escape(label)}</text>')
    for k, (name, data) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        data = [(s, v) for s, v in data if np.isfinite(v)]
        path = " ".join(f"{'M' if i == 0 else 'L'}{px(s):.1f},{py(v):.1f}" for i, (s, v) in enumerate(data))
        out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.extend(f'<circle cx="{px(s):.1f}" cy="{py(v):.1f}" r="2.5" fill="{colour}"/>' for s, v in data
                   if len(data) <= 60)
        if len(series) > 1:
            out.append(f'<text x="{width - right - 4}" y="{top + 14 + 14 * k}" text-anchor="end" class="legend" '
                       f'style="fill:{colour}">{html.escape(name)}</text>')
    if best is not None:
        step, value, label = best
        out.append(f'<circle cx="{px(step):.1f}" cy="{py(value):.1f}" r="6" class="best"/>'
                   f'<text x="{px(step) - 9:.1f}" y="{py(value) + 16:.1f}" text-anchor="end" class="tick">'
                   f'{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def heatmap(matrix: np.ndarray, labels: Sequence[str], title: str = "") -> str:
    """A confusion-matrix heatmap: rows true, columns predicted, the count in every cell.

    Colour is the share of the row (so rare classes show up as clearly as common ones):
    blue on the diagonal, red off it.
    """
    n = len(matrix)
    cell = 44 if n <= 10 else 30 if n <= 20 else 22
    longest = max(len(str(x)) for x in labels)
    label_width = min(140, 10 + 7 * longest)
    rotate = longest > 3  # Short names (digits, ids) stand upright above their column.
    left, top = label_width + 20, (label_width if rotate else 12) + 24
    size_x, size_y = left + n * cell + 10, top + n * cell + 10
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    errors = shares * (1 - np.eye(n))
    worst = errors.max() or 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size_x} {size_y}" width="{size_x}" '
           f'height="{size_y}" role="img" aria-label="{html.escape(title or "confusion matrix")}" class="heatmap">',
           '<text x="4" y="14" class="tick">rows: true class, columns: predicted</text>']
    for k, name in enumerate(labels):
        name = html.escape(str(name)[:20])
        out.append(f'<text x="{left - 6}" y="{top + k * cell + cell / 2 + 4}" text-anchor="end" class="tick">'
                   f'{name}</text>')
        x = left + k * cell + cell / 2
        if rotate:
            out.append(f'<text x="{x + 4}" y="{top - 6}" class="tick" transform="rotate(-60 {x + 4} {top - 6})">'
                       f'{name}</text>')
        else:
            out.append(f'<text x="{x}" y="{top - 6}" class="tick" text-anchor="middle">{name}</text>')
    for i in range(n):
        for j in range(n):
            # Diagonal: blue by the share of the row. Off it: red scaled to the worst confusion, so a
            # single mistake among hundreds is still visible.
            share = float(shares[i, j]) if i == j else (0.2 + 0.8 * float(errors[i, j]) / worst
                                                         if matrix[i, j] else 0.0)
            light = int(255 * (1 - (0.7 if i == j else 0.85) * share))
            fill = f"rgb({light},{light},255)" if i == j else f"rgb(255,{light},{light})"
            x, y = left + j * cell, top + i * cell
            out.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" class="cell">'
                       f'<title>true {html.escape(str(labels[i]))}, predicted {html.escape(str(labels[j]))}: '
                       f'{int(matrix[i, j])}</title></rect>')
            if matrix[i, j]:
                shade = "count light" if share > 0.55 else "count"
                out.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" class="{shade}">'
                           f'{int(matrix[i, j])}</text>')
    out.append("</svg>")
    return "".join(out)
