"""The Pareto view of an evaluation: average ASR against average ORR, one point per mode.

Lower-left is better on both axes; the modes no other mode beats on both are joined as the
Pareto front. matplotlib draws the plot when it is installed. It is not a dependency of waltzlit
(one plot does not justify it), so without it the same plot is drawn with Pillow, which is always
installed because tensorboard requires it; its bitmap font is plainer, the content is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ParetoPoint:
    """One mode: its row label and its average rates (fractions)."""

    label: str
    orr: float
    asr: float


def dashes(start: tuple[float, float], end: tuple[float, float], dash: float = 6.0, gap: float = 4.0):
    """The segment ``start``-``end`` cut into dashes of ``dash`` pixels with ``gap`` pixels between
    (the Pillow fallback's dashed Pareto front, as matplotlib draws it with "--")."""
    (x0, y0), (x1, y1) = start, end
    length = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5
    pieces, position = [], 0.0
    while position < length:
        stop = min(position + dash, length)
        pieces.append([(x0 + (x1 - x0) * position / length, y0 + (y1 - y0) * position / length),
                       (x0 + (x1 - x0) * stop / length, y0 + (y1 - y0) * stop / length)])
        position = stop + gap
    return pieces


def pareto_front(points: Sequence[ParetoPoint]) -> list[ParetoPoint]:
    """Points no other point beats on both rates (ties allowed), sorted by ORR."""
    front = [
        p for p in points
        if not any(q.orr <= p.orr and q.asr <= p.asr and (q.orr, q.asr) != (p.orr, p.asr) for q in points)
    ]
    return sorted(front, key=lambda p: (p.orr, p.asr))


def point_tags(points: Sequence[ParetoPoint]) -> list[str]:
    """The row number(s) to print beside each point; points that coincide share one tag ("1,3")."""
    groups: dict[tuple[float, float], list[int]] = {}
    for number, p in enumerate(points, 1):
        groups.setdefault((round(p.orr, 6), round(p.asr, 6)), []).append(number)
    return [",".join(map(str, groups[(round(p.orr, 6), round(p.asr, 6))])) for p in points]


def legend_lines(points: Sequence[ParetoPoint]) -> list[str]:
    return [f"{n}  {p.label}: ORR {100 * p.orr:.1f}, ASR {100 * p.asr:.1f}" for n, p in enumerate(points, 1)]


def write_pareto_png(points: Sequence[ParetoPoint], path: Path, title: str = "ASR vs ORR (lower-left is better)") -> str:
    """Draw the plot to ``path``; returns the backend used ("matplotlib" or "pillow").

    Each point carries its row number(s) in the table; the legend names the rows.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _pillow_plot(points, path, title)
        return "pillow"
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    front = pareto_front(points)
    axes.plot([100 * p.orr for p in front], [100 * p.asr for p in front], "--", color="grey", label="Pareto front")
    for p, tag, line in zip(points, point_tags(points), legend_lines(points)):
        axes.scatter(100 * p.orr, 100 * p.asr, s=40, label=line)
        axes.annotate(tag, (100 * p.orr, 100 * p.asr), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axes.set_xlabel("avg ORR (%), lower is better")
    axes.set_ylabel("avg ASR (%), lower is better")
    axes.set_title(title)
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return "matplotlib"


_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def _pillow_plot(points: Sequence[ParetoPoint], path: Path, title: str) -> None:
    from PIL import Image, ImageDraw

    side, margin, legend_width = 460, 60, 330
    width, height = side + legend_width, side
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    top = max([100 * p.asr for p in points] + [100 * p.orr for p in points] + [10.0])
    top = min(100.0, 10 * (int(top // 10) + 1))
    right, bottom = side - 20, side - margin

    def xy(orr: float, asr: float) -> tuple[float, float]:
        return margin + (right - margin) * (100 * orr) / top, bottom - (bottom - 40) * (100 * asr) / top

    for tick in range(0, int(top) + 1, max(1, int(top) // 5)):
        x, _ = xy(tick / 100, 0)
        _, y = xy(0, tick / 100)
        draw.line([(x, 40), (x, bottom)], fill=(230, 230, 230))
        draw.line([(margin, y), (right, y)], fill=(230, 230, 230))
        draw.text((x - 6, bottom + 6), str(tick), fill="black")
        draw.text((margin - 28, y - 5), str(tick), fill="black")
    draw.rectangle([(margin, 40), (right, bottom)], outline="black")
    draw.text((margin + 60, bottom + 28), "avg ORR (%), lower is better", fill="black")
    draw.text((margin - 40, 22), "avg ASR (%), lower is better", fill="black")
    draw.text((margin, 4), title, fill="black")
    front = [xy(p.orr, p.asr) for p in pareto_front(points)]
    for start, end in zip(front, front[1:]):
        for piece in dashes(start, end):
            draw.line(piece, fill=(128, 128, 128), width=1)
    for index, (p, tag) in enumerate(zip(points, point_tags(points))):
        x, y = xy(p.orr, p.asr)
        color = _COLORS[index % len(_COLORS)]
        draw.ellipse([(x - 5, y - 5), (x + 5, y + 5)], fill=color)
        draw.text((x + 8, y - 12), tag, fill="black")
        draw.text((side + 4, 44 + 16 * index), legend_lines(points)[index], fill=color)
    draw.text((side + 4, 44 + 16 * len(points)), "-- Pareto front", fill=(128, 128, 128))
    image.save(path, format="PNG")
