"""Per-client label counts of a partition: the N×K matrix plus names, a text table, a dict for JSON
(`label_histograms`), and a PNG of stacked bars (`plot_label_histograms`, matplotlib's Agg canvas, imported
only when a plot is drawn: most processes never draw one).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .partition import class_counts


@dataclass(frozen=True)
class LabelHistograms:
    """Per-client label counts of a partition: counts[i, k] = samples of class k that client i holds."""

    counts: np.ndarray
    class_names: tuple[str, ...]
    title: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def sizes(self) -> np.ndarray:
        return self.counts.sum(axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "classes": list(self.class_names),
            "clients": [
                {"client": i, "samples": int(row.sum()), "counts": [int(c) for c in row]}
                for i, row in enumerate(self.counts)
            ],
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """A plain-text table: one row per client, one column per class, and the total."""
        names = [n if len(n) <= 12 else n[:11] + "." for n in self.class_names]
        widths = [max(len(n), len(str(int(self.counts[:, k].max(initial=0))))) for k, n in enumerate(names)]
        total_w = max(5, len(str(int(self.sizes.max(initial=0)))))
        head = "client  " + "  ".join(n.rjust(w) for n, w in zip(names, widths)) + "  " + "total".rjust(total_w)
        lines = [self.title] if self.title else []
        lines.append(head)
        for i, row in enumerate(self.counts):
            cells = "  ".join(str(int(c)).rjust(w) for c, w in zip(row, widths))
            lines.append(f"{i:>6}  {cells}  {str(int(row.sum())).rjust(total_w)}")
        lines.extend(self.notes)
        return "\n".join(lines)


def label_histograms(
    labels: np.ndarray,
    shards: Sequence[np.ndarray],
    num_classes: int | None = None,
    *,
    class_names: Sequence[str] | None = None,
    title: str = "",
    notes: Sequence[str] = (),
) -> LabelHistograms:
    """Per-client label counts (see LabelHistograms); class names default to the class ids."""
    counts = class_counts(labels, list(shards), num_classes)
    k = counts.shape[1]
    names = tuple(class_names) if class_names else tuple(str(c) for c in range(k))
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    return LabelHistograms(counts=counts, class_names=names, title=title, notes=tuple(notes))


def plot_label_histograms(hist: LabelHistograms, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Draws the clients' label counts as stacked horizontal bars (one bar per client) into a PNG file."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, k = hist.counts.shape
    fig = Figure(figsize=(7.0, 1.2 + 0.45 * max(n, 1) + (0.1 * k if k <= 12 else 0.05 * k)), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colours = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    left = np.zeros(n)
    ys = np.arange(n)
    for c in range(k):
        ax.barh(
            ys,
            hist.counts[:, c],
            left=left,
            color=colours(c % colours.N),
            label=hist.class_names[c],
            edgecolor="white",
            linewidth=0.4,
        )
        left += hist.counts[:, c]
    for i, total in enumerate(hist.sizes):
        ax.text(left[i], i, f" {int(total)}", va="center", fontsize=8)
    ax.set_yticks(ys, [f"client {i}" for i in range(n)])
    ax.invert_yaxis()
    ax.set_xlabel("training samples")
    ax.set_xlim(0, max(1.0, float(left.max(initial=0))) * 1.12)
    ax.set_title(hist.title or "label histogram per client", fontsize=10)
    ax.legend(
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        ncol=1 if k <= 12 else 2,
        fontsize=8,
        frameon=False,
        title="class",
        title_fontsize=8,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")  # "tight" keeps the legend beside the axes
    return path
