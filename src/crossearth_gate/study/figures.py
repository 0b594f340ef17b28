"""The study's figures: the claims, accuracy against cost, mIoU with error bars, paired differences, gate maps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..runs.plots import DPI, plot_gate_maps, read_log_series
from ..util.atomic import atomic_write
from .records import DONE

MIN_CURVE_POINTS = 4  # a cell validated this often is a learning-curve run (the study's default gives 2)


def _save(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))


def plot_miou(protocol: str, summary: dict[str, Any], cells: list[dict[str, Any]], path: Path) -> Path:
    """Target-mean mIoU per config: bar = mean over seeds, error bar = sample std, dots = single seeds."""
    names = list(summary["configs"])
    fig = Figure(figsize=(max(6.0, 0.75 * len(names) + 2.0), 4.5), layout="constrained")
    ax = fig.subplots()
    for x, name in enumerate(names):
        s = summary["configs"][name]["target_mean_mIoU"]
        if s["mean"] is None:
            ax.text(x, 0.02, "no run", ha="center", va="bottom", rotation=90, fontsize=8, color="#777777",
                    transform=ax.get_xaxis_transform())  # at the axes' foot whatever the mIoU range
            continue
        ax.bar(x, s["mean"], 0.6, color="tab:blue", alpha=0.35)
        if s["std"] is not None:
            ax.errorbar(x, s["mean"], yerr=s["std"], color="black", capsize=4, linewidth=1.2)
        seeds = [c["target_mean_mIoU"] for c in cells if c["protocol"] == protocol and c["config"] == name
                 and c["status"] == DONE and c["target_mean_mIoU"] is not None]
        ax.plot([x] * len(seeds), seeds, "o", color="tab:blue", markersize=4)
        ax.annotate(f"{s['mean']:.1f}\nn={s['n']}", (x, s["mean"] + (s["std"] or 0)), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=7)
    means = [summary["configs"][n]["target_mean_mIoU"]["mean"] for n in names]
    known = [m for m in means if m is not None]
    if known:
        ax.set_ylim(max(0.0, min(known) - 10), min(100.0, max(known) + 8))
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_ylabel("target-mean mIoU (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Protocol {protocol}: mean ± sample std over seeds (dots: single seeds)")
    return _save(fig, path)


def plot_cost(protocol: str, summary: dict[str, Any], path: Path) -> Path | None:
    """Target-mean mIoU (mean, 95 % t interval over seeds) against the step cost relative to the baseline.

    The reader's question: which method is worth its compute. None when no config has both numbers yet.
    """
    cost = summary["relative_cost"]
    names = [n for n in cost["configs"] if summary["configs"][n]["target_mean_mIoU"]["mean"] is not None]
    if not names:
        return None
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.subplots()
    markers = "osD^vP*Xh<>p"
    for i, name in enumerate(names):
        c, x = summary["configs"][name], cost["configs"][name]
        y = c["target_mean_mIoU"]["mean"]
        interval = c["target_mean_interval"]
        yerr = None if interval is None else [[y - interval[0]], [interval[1] - y]]
        xerr = [[x["mean"] - x["low"]], [x["high"] - x["mean"]]]
        ax.errorbar(x["mean"], y, xerr=xerr, yerr=yerr, fmt=markers[i % len(markers)], capsize=3, markersize=7,
                    color=f"C{i % 10}", mfc="white" if interval is None else f"C{i % 10}",
                    label=f"{name} (n={c['target_mean_mIoU']['n']})")
    ax.axvline(1.0, color="black", linewidth=0.6, alpha=0.5)
    ax.set_xlabel(f"step cost relative to {cost['baseline']} (median step + Fisher selections; bar: range over seeds)")
    ax.set_ylabel("target-mean mIoU (%), mean and 95 % t interval")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"Protocol {protocol}: accuracy against cost (hollow: one seed, no interval)")
    return _save(fig, path)


def plot_paired(protocol: str, summary: dict[str, Any], reference: str, path: Path) -> Path:
    """Mean paired difference to the reference per config with its 95 % t interval (none for n < 2)."""
    paired = summary["paired"]
    names = list(paired)
    fig = Figure(figsize=(7.0, max(2.5, 0.45 * len(names) + 1.5)), layout="constrained")
    ax = fig.subplots()
    ax.axvline(0.0, color="black", linewidth=0.8)
    for y, name in enumerate(names):
        p = paired[name]
        if p["mean"] is None:
            ax.text(0, y, "  no paired seeds", va="center", fontsize=8, color="#777777")
            continue
        if p["low"] is not None:
            ax.errorbar(p["mean"], y, xerr=[[p["mean"] - p["low"]], [p["high"] - p["mean"]]], fmt="o",
                        color="tab:blue", capsize=4)
        else:
            ax.plot(p["mean"], y, "o", mfc="white", color="tab:blue")
        ax.annotate(f"n={p['n']}", (p["mean"], y), textcoords="offset points", xytext=(0, 6), ha="center",
                    fontsize=7)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"target-mean mIoU minus {reference} (points, same seed)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Protocol {protocol}: paired differences, 95 % t intervals (hollow: one seed, no interval)")
    return _save(fig, path)


VERDICT_COLOURS = {"supported": "tab:green", "contradicted": "tab:red"}  # inconclusive: grey
INCONCLUSIVE_COLOUR = "#666666"
FULL_INTERVAL_SEEDS = 3  # two seeds give t intervals 12.7 standard deviations wide: they would flatten every row


def claims_range(shown: list[dict[str, Any]]) -> tuple[float, float]:
    """The claims figure's x range: every mean and paper value, 0, and the intervals of claims with at least
    ``FULL_INTERVAL_SEEDS`` seeds (all intervals when none has that many), padded by 8 %."""
    wide = [c for c in shown if c["low"] is not None]
    kept = [c for c in wide if c["n"] >= FULL_INTERVAL_SEEDS] or wide
    values = [0.0] + [c["mean"] for c in shown] + [c["paper"]["difference"] for c in shown if c.get("paper")]
    values += [bound for c in kept for bound in (c["low"], c["high"])]
    pad = 0.08 * ((max(values) - min(values)) or 1.0)
    return min(values) - pad, max(values) + pad


def plot_claims(claims: list[dict[str, Any]], path: Path) -> Path | None:
    """The claims figure (``claims_figure``) saved to ``path``; None before any claim has a paired seed."""
    fig = claims_figure(claims)
    return None if fig is None else _save(fig, path)


def claims_figure(claims: list[dict[str, Any]]) -> Figure | None:
    """Every claim with a paired seed on one axis: mean difference, 95 % t interval, coloured by verdict, with the
    paper's own difference (its setting) beside it. The study's answer at a glance."""
    shown = [c for c in claims if c["n"]]
    if not shown:
        return None
    fig = Figure(figsize=(8.5, 0.38 * len(shown) + 1.8), layout="constrained")
    ax = fig.subplots()
    ax.axvline(0.0, color="black", linewidth=0.8)
    for y, c in enumerate(shown):
        colour = VERDICT_COLOURS.get(c["verdict"], INCONCLUSIVE_COLOUR)
        if c["low"] is not None:
            ax.errorbar(c["mean"], y, xerr=[[c["mean"] - c["low"]], [c["high"] - c["mean"]]], fmt="o", color=colour,
                        capsize=3)
        else:
            ax.plot(c["mean"], y, "o", mfc="white", color=colour)
        if c.get("paper"):
            ax.plot(c["paper"]["difference"], y, "*", color="tab:orange", markersize=10)
    low, high = claims_range(shown)
    ax.set_xlim(low, high)
    for y, c in enumerate(shown):  # an interval cut by the axes: its end written at the edge
        if c["low"] is not None and c["low"] < low:
            ax.annotate(f"← {c['low']:+.1f}", (low, y), xytext=(2, -9), textcoords="offset points", fontsize=6)
        if c["high"] is not None and c["high"] > high:
            ax.annotate(f"{c['high']:+.1f} →", (high, y), xytext=(-2, -9), textcoords="offset points", fontsize=6,
                        ha="right")
    ax.plot([], [], "o", color=VERDICT_COLOURS["supported"], label="supported")
    ax.plot([], [], "o", color=VERDICT_COLOURS["contradicted"], label="contradicted")
    ax.plot([], [], "o", color=INCONCLUSIVE_COLOUR, label="inconclusive (hollow: one seed)")
    if any(c.get("paper") for c in shown):
        ax.plot([], [], "*", color="tab:orange", markersize=10, label="the paper's difference, in its setting")
    ax.set_yticks(range(len(shown)), [f"{c['name']} ({c['protocol']}, n={c['n']})" for c in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("better − worse, target-mean mIoU (points, paired by seed), mean and 95 % t interval")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Claims: paired differences")
    return fig


def gate_histories(protocol: str, cells: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per gated config, the selections of all its finished seeds pooled into one gate history."""
    pooled: dict[str, dict[str, Any]] = {}
    for c in cells:
        gates_path = Path(c["run_dir"]) / "gates.json"
        if c["protocol"] != protocol or c["status"] != DONE or not gates_path.is_file():
            continue
        gates = json.loads(gates_path.read_text(encoding="utf-8"))
        entry = pooled.setdefault(c["config"], {"k": gates.get("k"), "selector": gates.get("selector"),
                                                "selections": [], "seeds": 0})
        entry["selections"] += gates.get("selections", [])
        entry["seeds"] += 1
    return {f"{name} ({g['seeds']} seed{'s' * (g['seeds'] != 1)})": g for name, g in pooled.items()
            if g["selections"]}


def logged_curves(protocol: str, cells: list[dict[str, Any]], column: str,
                  min_points: int = 1) -> dict[str, dict[int, tuple[Any, Any]]]:
    """Config → seed → (steps, values) of one logged metric, for every finished cell of ``protocol`` that logged
    it at least ``min_points`` times."""
    curves: dict[str, dict[int, tuple[Any, Any]]] = {}
    for c in cells:
        log = Path(c["run_dir"]) / "logs" / "metrics.csv"
        if c["protocol"] != protocol or c["status"] != DONE or not log.is_file():
            continue
        steps, values = read_log_series(log, column)
        if len(values) >= max(1, min_points):
            curves.setdefault(c["config"], {})[c["seed"]] = (steps, values)
    return curves


def validation_curves(protocol: str, cells: list[dict[str, Any]]) -> dict[str, dict[int, tuple[Any, Any]]]:
    """Held-out source mIoU of the cells validated at least MIN_CURVE_POINTS times (learning-curve runs)."""
    return logged_curves(protocol, cells, "val/mIoU", MIN_CURVE_POINTS)


def seed_mean(seeds: dict[int, tuple[Any, Any]]) -> tuple[list[float], list[float]]:
    """The mean over seeds at the steps every seed logged (a resumed or shorter run may miss some)."""
    per_seed = [dict(zip(steps.tolist(), values.tolist(), strict=True)) for steps, values in seeds.values()]
    common = sorted(set.intersection(*(set(p) for p in per_seed)))
    return common, [sum(p[s] for p in per_seed) / len(per_seed) for s in common]


def plot_curves(title: str, ylabel: str, curves: dict[str, dict[int, tuple[Any, Any]]], path: Path) -> Path:
    """Per config, its mean over seeds (thick) over its single seeds (thin): configs stay apart at a glance."""
    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.subplots()
    for i, (config, seeds) in enumerate(curves.items()):
        color, style = f"C{i % 10}", ("-", "--", ":")[i // 10 % 3]
        for steps, values in seeds.values():
            ax.plot(steps, values, color=color, linestyle=style, linewidth=0.7, alpha=0.35)
        steps, mean = seed_mean(seeds)
        ax.plot(steps, mean, color=color, linestyle=style, linewidth=2.0, label=f"{config} (n={len(seeds)})")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _save(fig, path)


def write_figures(summary: dict[str, Any], cells: list[dict[str, Any]],
                  out: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Every figure of every protocol, under ``out/figures``: the accuracy-against-cost figures (study.md leads
    with them) and the rest, both keyed by protocol."""
    costs: dict[str, Path] = {}
    figures: dict[str, list[Path]] = {}
    for protocol, s in summary["protocols"].items():
        cost = plot_cost(protocol, s, out / "figures" / f"cost_{protocol}.png")
        if cost is not None:
            costs[protocol] = cost
        paths = [plot_miou(protocol, s, cells, out / "figures" / f"miou_{protocol}.png")]
        if s["paired"]:
            paths.append(plot_paired(protocol, s, summary["reference"], out / "figures" / f"paired_{protocol}.png"))
        gates = gate_histories(protocol, cells)
        if gates:
            paths.append(plot_gate_maps(gates, out / "figures" / f"gate_maps_{protocol}.png",
                                        f"Protocol {protocol}: how often each slot was active (seeds pooled)"))
        curves = validation_curves(protocol, cells)
        if curves:  # how far from convergence the study's step count is
            paths.append(plot_curves(f"Protocol {protocol}: learning curves", "held-out source mIoU (%)", curves,
                                     out / "figures" / f"learning_curves_{protocol}.png"))
        confident = logged_curves(protocol, cells, "dacs/confident_share")
        if confident:  # does the DACS teacher pass τ on most target pixels within the schedule?
            paths.append(plot_curves(f"Protocol {protocol}: DACS pseudo-labels passing the confidence threshold τ",
                                     "share of target pixels above τ", confident,
                                     out / "figures" / f"confident_share_{protocol}.png"))
        figures[protocol] = paths
    return costs, figures
