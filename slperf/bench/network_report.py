"""The report's network section, for suites with a ``networks`` axis: per compression, a table of every paradigm
at every link profile (the rate and round trip measured on the link in the same run, wall time, time per round,
time to the target accuracy, the server's busy share), and a plot of time to accuracy against the link.

Works on results rows only (``slperf.bench.rows``), like the rest of the report.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PLOT_NAME = "network_time_to_accuracy.png"

HEADER = [
    "paradigm",
    "link",
    "measured up / down (Mbit/s)",
    "round trip (ms)",
    "wall time (s)",
    "time / round (s)",
    "time to target (s)",
    "final acc (%)",
    "server busy (%)",
]


def network_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("status") == "ok" and r.get("network")]


def _f(value: Any, digits: int = 1, scale: float = 1.0) -> str:
    if value is None:
        return "—"
    return f"{scale * float(value):.{digits}f}"


def _profiles(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Profile labels from the fastest link to the slowest (by configured rate, then delay)."""
    seen: dict[str, tuple[float, float]] = {}
    for r in rows:
        rate = r.get("link_rate_mbit")
        seen.setdefault(
            r["network"], (-(float(rate) if rate is not None else float("inf")), r.get("link_delay_ms") or 0)
        )
    return sorted(seen, key=lambda label: seen[label])


def _by_compression(rows: Sequence[Mapping[str, Any]]) -> OrderedDict[str, list[Mapping[str, Any]]]:
    out: OrderedDict[str, list[Mapping[str, Any]]] = OrderedDict()
    for r in rows:
        out.setdefault(r.get("compression") or "none", []).append(r)
    return out


def section_markdown(rows: Sequence[Mapping[str, Any]], plots: Sequence[Path] = ()) -> list[str]:
    """The section's lines (empty when no row ran over a shaped network)."""
    shaped = network_rows(rows)
    if not shaped:
        return []
    target = next((r["target_accuracy"] for r in shaped if r.get("target_accuracy") is not None), None)
    out = [
        "## Over shaped links",
        "",
        "Each client daemon ran in a network namespace of its own behind `tc tbf` at the profile's rate (both "
        "directions) and a relay adding the profile's one-way delay each way. *Measured* is that run's own bulk "
        "transfer over the client's link before the cell (the slowest client), and the round trip a ping took "
        "through its relay. Wall time is the server's (set-up and every round); time per round and time to "
        f"target ({'no target set' if target is None else f'{100 * float(target):g}% test accuracy'}) are sums of "
        "round times; server busy = seconds its compute thread worked / wall time. Means over seeds.",
        "",
    ]
    profiles = _profiles(shaped)
    for compression, crows in _by_compression(shaped).items():
        out += [f"### compress: {compression}", ""]
        out.append("| " + " | ".join(HEADER) + " |")
        out.append("|" + "|".join(["---", "---"] + ["---:"] * (len(HEADER) - 2)) + "|")
        paradigms = list(OrderedDict.fromkeys(r["paradigm"] for r in crows))
        for paradigm in paradigms:
            for profile in profiles:
                cell = [r for r in crows if r["paradigm"] == paradigm and r["network"] == profile]
                if not cell:
                    continue
                out.append("| " + " | ".join([paradigm, profile, *_figures(cell)]) + " |")
        out.append("")
    if any(p.name == PLOT_NAME for p in plots):
        out += [f"![time to accuracy against the link](plots/{PLOT_NAME})", ""]
    return out


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def _figures(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    reached = [r for r in rows if r.get("seconds_to_target") is not None]
    to_target = _f(_mean(reached, "seconds_to_target")) if reached else "not reached"
    if reached and len(reached) < len(rows):
        to_target += f" ({len(reached)}/{len(rows)} seeds)"
    return [
        f"{_f(_mean(rows, 'link_up_mbit'))} / {_f(_mean(rows, 'link_down_mbit'))}",
        _f(_mean(rows, "link_rtt_ms")),
        _f(_mean(rows, "run_seconds")),
        _f(_mean(rows, "seconds_per_round"), 2),
        to_target,
        _f(_mean(rows, "final_accuracy"), 2, 100),
        _f(_mean(rows, "server_busy_fraction"), 1, 100),
    ]


def write_plot(rows: Sequence[Mapping[str, Any]], plots_dir: Path) -> list[Path]:
    """Time to the target accuracy (left; where no cell reached it: none drawn) and time per round (right)
    against the link profile, fastest link first; one line per paradigm, dashed when compressed."""
    shaped = network_rows(rows)
    if not shaped:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = _profiles(shaped)
    paradigms = list(OrderedDict.fromkeys(r["paradigm"] for r in shaped))
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=100)
    for ax, key, title in (
        (axes[0], "seconds_to_target", "time to target accuracy (s)"),
        (axes[1], "seconds_per_round", "time per round (s)"),
    ):
        for i, paradigm in enumerate(paradigms):
            for j, (compression, crows) in enumerate(_by_compression(shaped).items()):
                xs, ys = [], []
                for k, profile in enumerate(profiles):
                    value = _mean([r for r in crows if r["paradigm"] == paradigm and r["network"] == profile], key)
                    if value is not None:
                        xs.append(k)
                        ys.append(value)
                if xs:
                    label = paradigm if compression == "none" else f"{paradigm} ({compression})"
                    ax.plot(xs, ys, marker="o", color=cmap(i % 10), linestyle="-" if j == 0 else "--", label=label)
        if not ax.lines:  # say why a panel is empty rather than leave a blank frame
            ax.text(0.5, 0.5, "no cell reached the target", transform=ax.transAxes, ha="center", va="center")
        ax.set_xticks(range(len(profiles)), profiles)
        ax.set_xlabel("link profile (fastest first)")
        ax.set_ylabel(title)
        if ax.lines:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    target = next((r["target_accuracy"] for r in shaped if r.get("target_accuracy") is not None), None)
    axes[0].set_title("time to " + ("target" if target is None else f"{100 * float(target):g}% accuracy"))
    axes[1].set_title("time per round")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    plots_dir.mkdir(parents=True, exist_ok=True)
    path = plots_dir / PLOT_NAME
    fig.savefig(path)
    plt.close(fig)
    return [path]
