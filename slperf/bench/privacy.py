"""The benchmark's privacy figures: what the run's attacks measured (``attacks:``, recorded by the server's
``PrivacyObserver`` in every round's record and, for the last round, in summary.json), as row columns, a
leakage table per group of the report and a privacy–utility plot per paradigm.

A row's privacy figures are the **final round's** (what summary.json records): a defense shapes the model over
the rounds, and the first round's figures (an untrained bottom leaks nearly everything, whatever the defense)
would hide what it does. Every round's figures stay in the row's curve (``privacy``). ε is what the defenses
report in the round's privacy record (``activation_epsilon``: Opacus's RDP accountant over every round so far, the
worst client's; ``label_epsilon``: randomized response's, each label answered once per run): the final round's is
the whole run's.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slperf.bench.suite import CENTRALIZED, Partition


@dataclass(frozen=True)
class Figure:
    """One privacy column: the observer's figure name, its header and how many decimals it is shown with."""

    name: str
    header: str
    digits: int


FIGURES = (
    Figure("inversion_ssim", "inversion SSIM", 3),
    Figure("inversion_psnr", "inversion PSNR (dB)", 1),
    Figure("inversion_mse", "inversion MSE", 4),
    Figure("label_direction_auc", "label leak AUC (direction)", 3),
    Figure("label_norm_auc", "label leak AUC (norm)", 3),
    Figure("label_inference_accuracy", "label inference acc", 3),
    Figure("dcor", "dCor", 3),
    Figure("activation_epsilon", "ε (activations)", 2),
    Figure("label_epsilon", "ε (labels)", 2),
)
FIGURE_NAMES = tuple(f.name for f in FIGURES)
# The leakage figures a privacy–utility plot puts on its x axis (one panel each, where the paradigm has them).
LEAKAGE_AXES = OrderedDict(
    [
        ("inversion_ssim", "inversion SSIM (reconstruction vs input)"),
        ("dcor", "distance correlation (inputs, cut activations)"),
        ("label_direction_auc", "label leak AUC (direction score)"),
        ("label_inference_accuracy", "label inference accuracy"),
    ]
)
GRID_COLUMN = "inversion_grid"
MIN_SPAN = 0.05  # the narrowest leakage axis a plot shows (the figures on it lie in [0, 1])
_GRID = re.compile(r"inversion_round(\d+)\.png$")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def round_figures(record: Mapping[str, Any]) -> dict[str, float] | None:
    """A metrics.jsonl record's privacy figures (the means over clients; the per-client ones left out)."""
    privacy = record.get("privacy")
    if not isinstance(privacy, Mapping):
        return None
    return {k: float(v) for k, v in privacy.items() if k != "per_client" and isinstance(v, (int, float))}


def final_grid(run_dir: str | Path | None) -> str | None:
    """The last round's reconstruction grid the white-box inversion saved in the run folder, if any."""
    if not run_dir or not Path(run_dir).is_dir():
        return None
    found = [(int(m.group(1)), p) for p in Path(run_dir).iterdir() if (m := _GRID.match(p.name))]
    return str(max(found)[1]) if found else None


def row_figures(measured: Mapping[str, Any]) -> dict[str, Any]:
    """The row's privacy columns from what a runner measured: ``privacy`` (the final round's figures, as
    summary.json has them) and the run folder's last reconstruction grid. Empty when the cell ran no attack."""
    privacy = measured.get("privacy")
    out: dict[str, Any] = {}
    if isinstance(privacy, Mapping):
        for name in FIGURE_NAMES:
            value = privacy.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[name] = float(value)
    grid = measured.get(GRID_COLUMN) or final_grid(measured.get("run_dir"))
    if grid:
        out[GRID_COLUMN] = str(grid)
    return out


def has_privacy(rows: Sequence[Mapping[str, Any]]) -> bool:
    return any(_number(r.get(name)) for r in rows for name in FIGURE_NAMES)


def _mean(rows: Sequence[Mapping[str, Any]], name: str) -> float | None:
    values = [float(r[name]) for r in rows if _number(r.get(name))]
    return statistics.fmean(values) if values else None


def variant_of(row: Mapping[str, Any]) -> str:
    """The privacy variant a row belongs to within its paradigm: its defense (and attack list, when that is an
    axis); "undefended" for a suite without a defenses axis."""
    parts = [str(row["defense"]) if row.get("defense") else "undefended"]
    if row.get("attack_set"):
        parts.append(f"attacks {row['attack_set']}")
    return ", ".join(parts)


def _by_variant(rows: Sequence[Mapping[str, Any]]) -> OrderedDict[tuple[str, str], list[Mapping[str, Any]]]:
    out: OrderedDict[tuple[str, str], list[Mapping[str, Any]]] = OrderedDict()
    for row in rows:
        if row.get("status") == "ok" and row["paradigm"] != CENTRALIZED:
            out.setdefault((row["paradigm"], variant_of(row)), []).append(row)
    return out


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _link(path: str, report_dir: Path) -> str:
    try:
        return os.path.relpath(path, report_dir)
    except ValueError:  # another drive (Windows): the absolute path
        return path


def table_markdown(group_rows: Sequence[Mapping[str, Any]], report_dir: Path) -> str:
    """One leakage table: a line per paradigm and defense variant (seed means), accuracy, bytes and time beside
    the privacy figures, and a link to the first seed's reconstruction grid. Columns no row has are left out."""
    variants = _by_variant(group_rows)
    figures = [f for f in FIGURES if any(_number(r.get(f.name)) for rows in variants.values() for r in rows)]
    header = ["paradigm", "defense", "seeds", "final acc (%)", "MB up / client", "train time (s)"]
    header += [f.header for f in figures] + ["reconstructions"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 3)) + "|---|"]
    for (paradigm, variant), rows in variants.items():
        acc = _mean(rows, "final_accuracy")
        up = _mean(rows, "bytes_up_per_client")
        seconds = _mean(rows, "train_seconds")
        grid = next((r[GRID_COLUMN] for r in rows if r.get(GRID_COLUMN)), None)
        cells = [
            paradigm,
            variant,
            str(len(rows)),
            _fmt(None if acc is None else 100 * acc, 2),
            _fmt(None if up is None else up / 1e6, 2),
            _fmt(seconds, 1),
        ]
        cells += [_fmt(_mean(rows, f.name), f.digits) for f in figures]
        cells.append(f"[grid]({_link(grid, report_dir)})" if grid else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


COLUMNS_NOTE = (
    "Leakage columns are the final round's figures of the attacks each cell ran (summary.json's `privacy`; every "
    "round's are in results.jsonl's curve), means over the clients and then over seeds: inversion SSIM / PSNR / "
    "MSE of the honest-but-curious server's white-box reconstruction of each client's first training batch "
    "against the real inputs (higher SSIM and PSNR, lower MSE: more leaked); label leak AUC of Li et al.'s "
    "direction and norm scores for 'is it class 0?' and the label-inference accuracy of clustering the tail "
    "gradients (U-shaped; 0.5 and 1/classes are chance); dCor, the distance correlation between raw inputs and "
    "cut activations (1: the activations determine the inputs up to a linear map); ε, the privacy budget a "
    "defense reports, over the whole run. 'reconstructions' links the final round's grid of originals above "
    "reconstructions (first seed). — : the cell's paradigm does not allow that attack, or the suite did not ask."
)


# ---- the privacy–utility plot ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    variant: str
    leakage: float
    accuracy: float  # %


def plot_name(paradigm: str) -> str:
    return f"privacy_utility_{paradigm}.png"


def _series_label(row: Mapping[str, Any]) -> str:
    partition = Partition.from_label(str(row["partition"])).title
    return f"{row['dataset']}, {partition}, {row['clients']} clients"


def utility_points(rows: Sequence[Mapping[str, Any]]) -> OrderedDict[str, dict[str, dict[str, list[Point]]]]:
    """paradigm -> leakage figure -> series (dataset, partition, clients) -> one point per privacy variant (the
    seed means of its final accuracy and of that figure); only what has both."""
    out: OrderedDict[str, dict[str, dict[str, list[Point]]]] = OrderedDict()
    grouped: OrderedDict[tuple[str, str, str], list[Mapping[str, Any]]] = OrderedDict()
    for (paradigm, variant), vrows in _by_variant(rows).items():
        for row in vrows:
            grouped.setdefault((paradigm, _series_label(row), variant), []).append(row)
    for (paradigm, series, variant), vrows in grouped.items():
        accuracy = _mean(vrows, "final_accuracy")
        if accuracy is None:
            continue
        for figure in LEAKAGE_AXES:
            leakage = _mean(vrows, figure)
            if leakage is not None:
                by_figure = out.setdefault(paradigm, {}).setdefault(figure, {})
                by_figure.setdefault(series, []).append(Point(variant, leakage, 100 * accuracy))
    return out


def write_plots(rows: Sequence[Mapping[str, Any]], plots_dir: Path) -> list[Path]:
    """Per paradigm one PNG: a panel per leakage figure it has, test accuracy against leakage, one labelled
    point per defense variant and a marker per data set / partition / client count. What a defense should buy
    is a point left of the undefended one (less leakage) and about as high (little accuracy lost)."""
    points = utility_points(rows)
    if not points:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    markers = "osD^vP*X"
    for paradigm, by_figure in points.items():
        cols = min(2, len(by_figure))
        rows_ = math.ceil(len(by_figure) / cols)
        fig, grid = plt.subplots(rows_, cols, figsize=(5.6 * cols, 4.2 * rows_), dpi=100, squeeze=False)
        axes = list(grid.flat)
        for ax in axes[len(by_figure) :]:
            ax.set_visible(False)
        series_names = sorted({s for panel in by_figure.values() for s in panel})
        for ax, (figure, panel) in zip(axes, by_figure.items(), strict=False):
            for series, series_points in panel.items():
                i = series_names.index(series)
                ax.scatter(
                    [p.leakage for p in series_points],
                    [p.accuracy for p in series_points],
                    marker=markers[i % len(markers)],
                    label=series,
                    color=plt.get_cmap("tab10")(i % 10),
                )
                for p in series_points:
                    ax.annotate(
                        p.variant, (p.leakage, p.accuracy), fontsize=7, xytext=(4, 3), textcoords="offset points"
                    )
            ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
            low, high = ax.get_xlim()
            if high - low < MIN_SPAN:  # figures this close are one figure: do not blow their noise up
                middle = (low + high) / 2
                ax.set_xlim(middle - MIN_SPAN / 2, middle + MIN_SPAN / 2)
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.set_xlabel(f"{LEAKAGE_AXES[figure]}  (more leakage →)")
            ax.set_ylabel("final test accuracy (%)")
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=7, loc="best")
        fig.suptitle(f"{paradigm}: privacy–utility (final round; one point per defense variant)", fontsize=10)
        fig.tight_layout()
        path = plots_dir / plot_name(paradigm)
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
