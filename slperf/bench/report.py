"""Writers for the benchmark's results folder: results.csv, report.md (comparison tables) and PNG plots.

They work on results rows only (``slperf.bench.rows.finalize_row``), so they can be tested with fake rows
and re-run on an old results.jsonl. Tables group the cells by dataset x partition x client count; each
paradigm's row is the mean over its seeds (with the spread when there is more than one), and the dataset's
centralized baseline appears in every table of that dataset.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slperf.bench import network_report, privacy
from slperf.bench.machine import machine_info
from slperf.bench.parties import parties_markdown
from slperf.bench.suite import CENTRALIZED, Partition
from slperf.common.fsutil import atomic_write

CSV_COLUMNS = [
    "key",
    "status",
    "paradigm",
    "dataset",
    "partition",
    "partition_method",
    "clients",
    "seed",
    "defense",
    "attacks",
    "attack_set",
    "model",
    "epochs",
    "batch_size",
    "lr",
    "rounds",
    "final_accuracy",
    "best_accuracy",
    "target_accuracy",
    "rounds_to_target",
    "bytes_up",
    "bytes_down",
    "bytes_up_per_client",
    "bytes_down_per_client",
    "train_bytes_up",
    "train_bytes_down",
    "train_seconds",
    "run_seconds",
    "total_seconds",
    "expected_seconds",
    "peak_rss_server_mb",
    "peak_rss_client_max_mb",
    "peak_rss_client_mean_mb",
    *privacy.FIGURE_NAMES,
    privacy.GRID_COLUMN,
    "network",
    "compression",
    "link_rate_mbit",
    "link_delay_ms",
    "link_up_mbit",
    "link_down_mbit",
    "link_rtt_ms",
    "seconds_per_round",
    "seconds_to_target",
    "server_compute_seconds",
    "server_busy_fraction",
    "cpu_seconds_server",
    "cpu_seconds_client_max",
    "client_train_ms_per_batch_max",
    "config_hash",
    "run_dir",
    "started_at",
    "error",
]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    return buffer.getvalue()


def write_csv(rows: Iterable[Mapping[str, Any]], path: Path) -> Path:
    atomic_write(Path(path), csv_text(rows))
    return Path(path)


# ---- aggregation ----------------------------------------------------------------------------------------------


def _mean(values: Sequence[Any]) -> float | None:
    numbers = [float(v) for v in values if _number(v)]
    return statistics.fmean(numbers) if numbers else None


def _spread(values: Sequence[Any]) -> float | None:
    numbers = [float(v) for v in values if _number(v)]
    return statistics.stdev(numbers) if len(numbers) > 1 else None


def group_key(row: Mapping[str, Any]) -> tuple[str, str, int]:
    return (row["dataset"], row["partition"], int(row["clients"]))


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Seed-mean of one paradigm's finished rows in one group."""
    ok = [r for r in rows if r.get("status") == "ok"]
    out: dict[str, Any] = {"seeds": len(ok)}
    for name in (
        "final_accuracy",
        "best_accuracy",
        "bytes_up_per_client",
        "bytes_down_per_client",
        "train_seconds",
        "total_seconds",
        "peak_rss_server_mb",
        "peak_rss_client_max_mb",
    ):
        values = [r.get(name) for r in ok]
        out[name] = _mean(values)
        out[name + "_sd"] = _spread(values)
    reached = [r["rounds_to_target"] for r in ok if r.get("rounds_to_target") is not None]
    out["rounds_to_target"] = _mean(reached)
    out["reached"] = len(reached)
    return out


def _pct(value: float | None, sd: float | None = None) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.2f}" + (f" ± {100 * sd:.2f}" if sd is not None else "")


def _fixed(value: float | None, digits: int = 1, sd: float | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _mb(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1e6:.2f}"


def _rounds(agg: Mapping[str, Any]) -> str:
    if not agg["reached"]:
        return "not reached"
    text = f"{agg['rounds_to_target']:.1f}".rstrip("0").rstrip(".")
    return text if agg["reached"] == agg["seeds"] else f"{text} ({agg['reached']}/{agg['seeds']} seeds)"


def _target_label(rows: Sequence[Mapping[str, Any]]) -> str:
    targets = {float(r["target_accuracy"]) for r in rows if r.get("target_accuracy") is not None}
    if len(targets) == 1:
        return f"rounds to {100 * targets.pop():g}%"
    return "rounds to target"


TABLE_HEADER = [
    "paradigm",
    "seeds",
    "final acc (%)",
    "best acc (%)",
    "{target}",
    "MB up / client",
    "MB down / client",
    "train time (s)",
    "total time (s)",
    "peak RSS server (MB)",
    "peak RSS client (MB)",
]


def series_name(row: Mapping[str, Any]) -> str:
    """A table line's / plot line's name: the paradigm, with its privacy variant when the suite has those axes and
    its network profile and codec when the matrix varies them (so that the tables and plots never average a LAN
    cell with a WAN one, or a defended cell with an undefended one, as if they were seeds)."""
    name = str(row["paradigm"])
    if row.get("defense") or row.get("attack_set"):
        name += f" ({privacy.variant_of(row)})"
    extra = [str(row[k]) for k in ("network", "compression") if row.get(k)]
    return name + (f" [{', '.join(extra)}]" if extra else "")


def table_markdown(group_rows: Sequence[Mapping[str, Any]], centralized_rows: Sequence[Mapping[str, Any]]) -> str:
    """One comparison table: a line per paradigm (and privacy variant; seed means), the centralized baseline
    first."""
    header = [h.replace("{target}", _target_label([*group_rows, *centralized_rows])) for h in TABLE_HEADER]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    by_paradigm: OrderedDict[str, list[Mapping[str, Any]]] = OrderedDict()
    if centralized_rows:
        by_paradigm[CENTRALIZED] = list(centralized_rows)
    for row in group_rows:
        by_paradigm.setdefault(series_name(row), []).append(row)
    for paradigm, rows in by_paradigm.items():
        agg = aggregate(rows)
        if not agg["seeds"]:
            continue
        name = f"*{paradigm}* (baseline)" if paradigm == CENTRALIZED else paradigm
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    str(agg["seeds"]),
                    _pct(agg["final_accuracy"], agg["final_accuracy_sd"]),
                    _pct(agg["best_accuracy"], agg["best_accuracy_sd"]),
                    _rounds(agg),
                    _mb(agg["bytes_up_per_client"]),
                    _mb(agg["bytes_down_per_client"]),
                    _fixed(agg["train_seconds"], 1, agg["train_seconds_sd"]),
                    _fixed(agg["total_seconds"], 1),
                    _fixed(agg["peak_rss_server_mb"], 0),
                    _fixed(agg["peak_rss_client_max_mb"], 0),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def groups(rows: Sequence[Mapping[str, Any]]) -> OrderedDict[tuple[str, str, int], list[Mapping[str, Any]]]:
    out: OrderedDict[tuple[str, str, int], list[Mapping[str, Any]]] = OrderedDict()
    for row in rows:
        if row["paradigm"] == CENTRALIZED:
            continue
        out.setdefault(group_key(row), []).append(row)
    return out


def plot_name(group: tuple[str, str, int], kind: str) -> str:
    dataset, partition, clients = group
    return f"{dataset}_{partition}_c{clients}_accuracy_vs_{kind}.png"


def report_markdown(
    rows: Sequence[Mapping[str, Any]],
    *,
    suite: Any = None,
    cells: Sequence[Any] | None = None,
    plots: Sequence[Path] | None = None,
    machine: Mapping[str, Any] | None = None,
    report_dir: Path | None = None,
) -> str:
    """The report; ``report_dir``: where it is written (links to run folders are relative to it)."""
    name = getattr(suite, "name", None) or "benchmark"
    out = [f"# SLPerf benchmark: {name}", ""]
    description = getattr(suite, "description", "")
    if description:
        out += [description.strip(), ""]
    finished = [r for r in rows if r.get("status") == "ok"]
    failed = [r for r in rows if r.get("status") != "ok"]
    total = len(cells) if cells is not None else len(rows)
    pending = total - len(rows)
    out.append(
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}. Cells: {total} in the matrix, {len(finished)} "
        f"finished, {len(failed)} failed, {max(pending, 0)} not run yet."
    )
    if machine:
        load = machine.get("loadavg")
        out.append(
            f"Machine: {machine.get('cpus')} CPUs, Python {machine.get('python')}, torch "
            f"{machine.get('torch', '?')}"
            + (f", load average {load[0]:.1f} at the end" if load else "")
            + ". Timings are from a shared machine: treat them as indicative."
        )
    out += [
        "",
        "Columns: accuracy on the (capped) test set after the last round (final) and the best round; "
        "rounds until the test accuracy first reaches the target; bytes are the exact serialized sizes "
        "counted at the transport, training and evaluation, up (client → server) and down, averaged per "
        "client; train time is the sum of the round times (training + evaluation, no start-up); total time "
        "is the whole cell (processes, TLS, data set-up); peak RSS is each process's high-water mark "
        "(VmHWM): the server, and the largest client daemon. The centralized baseline is the unsplit model "
        "trained in one process on all the (capped) data with the same epochs, batch size and optimiser; "
        "its peak RSS is shown in the client column. Means over seeds, ± the standard deviation when there "
        "are several.",
        "",
    ]
    if privacy.has_privacy(finished):
        out += [privacy.COLUMNS_NOTE, ""]
    centralized = [r for r in finished if r["paradigm"] == CENTRALIZED]
    plot_names = {p.name for p in plots or []}
    for group, group_rows in groups(rows).items():
        dataset, partition, clients = group
        out += [f"## {dataset}, {Partition.from_label(partition).title}, {clients} clients", ""]
        out.append(table_markdown(group_rows, [r for r in centralized if r["dataset"] == dataset]))
        out.append("")
        if privacy.has_privacy(group_rows):
            out += ["Leakage (final round):", "", privacy.table_markdown(group_rows, report_dir or Path(".")), ""]
        for kind in ("round", "bytes", "time"):
            fname = plot_name(group, kind)
            if fname in plot_names:
                out.append(f"![accuracy vs {kind}](plots/{fname})")
        out.append("")
    utility = [p for p in plots or [] if p.name.startswith("privacy_utility_")]
    if utility:
        out += ["## Privacy–utility", ""]
        out += [f"![{p.stem}](plots/{p.name})" for p in utility]
        out.append("")
    out += network_report.section_markdown(rows, plots or [])
    if not groups(rows) and centralized:
        out += ["## Centralized baselines", "", table_markdown([], centralized), ""]
    out += parties_markdown(rows)
    if failed:
        out += ["## Failed cells", "", "| cell | error |", "|---|---|"]
        for row in failed:
            error = str(row.get("error", "")).replace("|", "\\|").replace("\n", " ")
            out.append(f"| {row['key']} | {error[:400]} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_tables(
    rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    *,
    suite: Any = None,
    cells: Sequence[Any] | None = None,
    plots: Sequence[Path] | None = None,
) -> Path:
    """results.csv and report.md in out_dir; returns the report's path."""
    out_dir = Path(out_dir)
    write_csv(rows, out_dir / "results.csv")
    report = out_dir / "report.md"
    text = report_markdown(rows, suite=suite, cells=cells, plots=plots, machine=machine_info(), report_dir=out_dir)
    atomic_write(report, text)
    return report


# ---- plots --------------------------------------------------------------------------------------------------


def mean_curve(rows: Sequence[Mapping[str, Any]], x: str) -> tuple[list[float], list[float]]:
    """Seed-mean curve: per round index, the mean x (round, MB or seconds) and the mean accuracy (%)."""
    curves = [r.get("curve") or [] for r in rows if r.get("status") == "ok"]
    curves = [c for c in curves if c]
    if not curves:
        return [], []
    length = min(len(c) for c in curves)
    xs, ys = [], []
    for i in range(length):
        points = [c[i] for c in curves]
        if x == "round":
            xs.append(float(points[0].get("round", i + 1)))
        elif x == "bytes":
            xs.append(statistics.fmean(float(p.get("bytes", 0)) for p in points) / 1e6)
        else:
            xs.append(statistics.fmean(float(p.get("seconds", 0.0)) for p in points))
        accs = [p.get("test_accuracy") for p in points if p.get("test_accuracy") is not None]
        ys.append(100 * statistics.fmean(accs) if accs else float("nan"))
    return xs, ys


@dataclass(frozen=True)
class Line:
    """One curve of a group's plot: the seeds of one series, drawn in its panel with its colour and style."""

    label: str
    colour: int  # index into the colour cycle: the same paradigm (or variant) has the same colour in every panel
    style: int  # index into the line styles: compressed / defended variants of one colour
    rows: tuple[Mapping[str, Any], ...]


def plot_layout(group_rows: Sequence[Mapping[str, Any]]) -> OrderedDict[str, list[Line]]:
    """A group's curves by panel. A suite that varies the link gets one panel per network profile (colour: the
    paradigm; style: the codec); one with privacy variants, one panel per paradigm (colour: the variant); any
    other, one panel with a colour per series. So a 33-cell network suite is three readable panels, not 33 lines
    in twenty recycled colours."""
    rows = [r for r in group_rows if r["paradigm"] != CENTRALIZED]
    networks = list(OrderedDict.fromkeys(str(r["network"]) for r in rows if r.get("network")))
    variants = list(
        OrderedDict.fromkeys(privacy.variant_of(r) for r in rows if r.get("defense") or r.get("attack_set"))
    )
    paradigms = list(OrderedDict.fromkeys(str(r["paradigm"]) for r in rows))
    codecs = list(OrderedDict.fromkeys(str(r.get("compression") or "none") for r in rows))

    singles: dict[str, int] = {}  # one panel: a colour per series, in order

    def where(row: Mapping[str, Any]) -> tuple[str, str, int, int]:
        """(panel, label, colour, style) of a row."""
        codec = str(row.get("compression") or "none")
        if len(networks) > 1:
            variant = f" ({privacy.variant_of(row)})" if variants else ""
            label = row["paradigm"] + variant + (f" [{codec}]" if len(codecs) > 1 else "")
            return str(row.get("network")), label, paradigms.index(row["paradigm"]), codecs.index(codec)
        if len(variants) > 1:
            variant = privacy.variant_of(row)
            return str(row["paradigm"]), variant, variants.index(variant), codecs.index(codec)
        label = series_name(row)
        return "", label, singles.setdefault(label, len(singles)), 0

    panels: OrderedDict[str, OrderedDict[str, list[Mapping[str, Any]]]] = OrderedDict()
    styles: dict[tuple[str, str], tuple[int, int]] = {}
    for row in rows:
        panel, label, colour, style = where(row)
        panels.setdefault(panel, OrderedDict()).setdefault(label, []).append(row)
        styles[(panel, label)] = (colour, style)
    return OrderedDict(
        (panel, [Line(label, *styles[(panel, label)], tuple(lrows)) for label, lrows in lines.items()])
        for panel, lines in panels.items()
    )


LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def write_plots(rows: Sequence[Mapping[str, Any]], plots_dir: Path) -> list[Path]:
    """Per group: accuracy vs round, vs bytes on the wire (MB, up + down, all clients), vs training time (s);
    one line per series (seed means), in panels as :func:`plot_layout` lays them out; the centralized baseline
    dashed black in every panel (on the bytes plot: its final accuracy as a horizontal line, since it moves no
    bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    finished = [r for r in rows if r.get("status") == "ok"]
    centralized = [r for r in finished if r["paradigm"] == CENTRALIZED]
    written: list[Path] = []
    labels = {
        "round": "round",
        "bytes": "bytes on the wire, up + down, all clients (MB)",
        "time": "training time (s, sum of round times)",
    }
    cmap = plt.get_cmap("tab10")
    for group, group_rows in groups(finished).items():
        dataset, partition, clients = group
        layout = plot_layout(group_rows)
        if not layout:
            continue
        base = [r for r in centralized if r["dataset"] == dataset]
        title = f"{dataset}, {Partition.from_label(partition).title}, {clients} clients"
        for kind in ("round", "bytes", "time"):
            n = len(layout)
            cols = min(n, 3)
            nrows = -(-n // cols)
            fig, axes = plt.subplots(
                nrows,
                cols,
                figsize=(9 if n == 1 else 4.6 * cols + 2.4, 4.8 if n == 1 else 3.9 * nrows),
                dpi=100,
                squeeze=False,
                sharey=True,
            )
            for ax in axes.flat[n:]:
                ax.set_visible(False)
            for ax, (panel, lines) in zip(axes.flat, layout.items()):
                all_x: list[float] = []
                for line in lines:
                    xs, ys = mean_curve(line.rows, kind)
                    if xs:
                        ax.plot(
                            xs,
                            ys,
                            marker=MARKERS[line.colour // 10 % len(MARKERS)],
                            markersize=3,
                            label=line.label,
                            color=cmap(line.colour % 10),
                            linestyle=LINE_STYLES[line.style % len(LINE_STYLES)],
                        )
                        all_x.extend(xs)
                if base:
                    xs, ys = mean_curve(base, kind if kind != "bytes" else "round")
                    if xs and kind == "bytes":
                        ax.axhline(ys[-1], color="black", linestyle="--", linewidth=1, label=f"{CENTRALIZED} (final)")
                    elif xs:
                        ax.plot(xs, ys, color="black", linestyle="--", linewidth=1, label=CENTRALIZED)
                if kind == "bytes" and all_x and min(all_x) > 0 and max(all_x) / min(all_x) > 20:
                    ax.set_xscale("log")  # FedAvg moves weights only: orders of magnitude fewer bytes
                ax.set_xlabel(labels[kind])
                ax.set_ylabel("test accuracy (%)")
                ax.set_title(f"{title}: {panel}" if n == 1 and panel else (panel or title), fontsize=10)
                ax.grid(True, alpha=0.3)
                ax.legend(
                    fontsize=7 if n > 1 else 8,
                    loc="lower right" if n > 1 else "upper left",
                    **({} if n > 1 else {"bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}),
                )
            if n > 1:
                fig.suptitle(title)
            fig.tight_layout()
            path = plots_dir / plot_name(group, kind)
            fig.savefig(path)
            plt.close(fig)
            written.append(path)
    written += privacy.write_plots(rows, plots_dir)
    written += network_report.write_plot(finished, plots_dir)
    return written
