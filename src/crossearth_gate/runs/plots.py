"""Figures drawn from saved run artefacts (gate history, training logs, metrics) and mask overlays.

Figures use matplotlib's object API (``Figure`` + Agg), never pyplot: no display, no global state,
so reports can be built in worker processes and tests without a GUI.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from crossearth_gate.toolbox.names import SLOT_TYPES
from crossearth_gate.util.atomic import atomic_write
from crossearth_gate.util.errors import UserError
from crossearth_gate.util.labels import IGNORE_INDEX

DPI = 120
ANNOTATE_MAX_LAYERS = 24


# ----------------------------------------------------------------------------- gate maps


def parse_slot(slot: str) -> tuple[int, int]:
    """``"semantic.3"`` → ``(3, 1)``: (layer, column of the type in ``SLOT_TYPES``)."""
    kind, _, layer = slot.partition(".")
    if kind not in SLOT_TYPES or not layer.isdigit():
        raise UserError(f"bad slot name {slot!r}: expected '<type>.<layer>' with type in {SLOT_TYPES}")
    return int(layer), SLOT_TYPES.index(kind)


def _selections(gates: Mapping[str, Any]) -> list[dict]:
    selections = gates.get("selections")
    if not isinstance(selections, list) or not selections:
        raise UserError("gates.json has no selections to plot")
    return selections


def infer_num_layers(gates: Mapping[str, Any]) -> int:
    """Deepest layer named anywhere in the gate history, plus one."""
    layers = [
        parse_slot(slot)[0]
        for sel in _selections(gates)
        for slot in [*sel.get("raw", {}), *sel.get("normalized", {}), *sel.get("active", [])]
    ]
    if not layers:
        raise UserError("gates.json selections name no slots")
    return max(layers) + 1


def _grid(gates: Mapping[str, Any], num_layers: int | None) -> tuple[list[dict], int]:
    inferred = infer_num_layers(gates)
    n = inferred if num_layers is None else num_layers
    if n < inferred:
        raise UserError(f"gates.json names layer {inferred - 1}, beyond num_layers={n}")
    return _selections(gates), n


def activation_frequency(gates: Mapping[str, Any], num_layers: int | None = None) -> np.ndarray:
    """(L, 3) fraction of selections in which each slot was active; rows = layers, cols = types."""
    selections, n = _grid(gates, num_layers)
    counts = np.zeros((n, len(SLOT_TYPES)))
    for sel in selections:
        for slot in set(sel.get("active", [])):
            counts[parse_slot(slot)] += 1
    return counts / len(selections)


def mean_normalized_score(gates: Mapping[str, Any], num_layers: int | None = None) -> np.ndarray:
    """(L, 3) mean normalised Fisher score over the selections that scored the slot; NaN if none did
    (e.g. a module type switched off in an ablation)."""
    selections, n = _grid(gates, num_layers)
    total = np.zeros((n, len(SLOT_TYPES)))
    seen = np.zeros((n, len(SLOT_TYPES)))
    for sel in selections:
        for slot, score in sel.get("normalized", {}).items():
            if score is not None:
                cell = parse_slot(slot)
                total[cell] += float(score)
                seen[cell] += 1
    return np.where(seen > 0, total / np.maximum(seen, 1), np.nan)


def _heatmap(
    fig: Figure, ax: Axes, matrix: np.ndarray, cmap_name: str, vmax: float, label: str, fmt: str,
    hide_zero: bool = False,
) -> None:
    """One annotated layer × type heatmap with its colorbar; white text on dark cells."""
    cmap = colormaps[cmap_name].with_extremes(bad="#d9d9d9")
    norm = Normalize(0.0, vmax if vmax > 0 else 1.0)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=norm, aspect="auto")
    n = matrix.shape[0]
    fig.colorbar(image, ax=ax, label=label, fraction=0.08, pad=0.04, aspect=20 * max(1.0, n / 10))
    ax.set_xticks(range(len(SLOT_TYPES)), SLOT_TYPES)
    ax.xaxis.tick_top()
    step = 1 if n <= ANNOTATE_MAX_LAYERS else math.ceil(n / ANNOTATE_MAX_LAYERS)
    ax.set_yticks(range(0, n, step))
    ax.set_ylabel("layer")
    ax.set_xticks(np.arange(-0.5, len(SLOT_TYPES)), minor=True)
    ax.set_yticks(np.arange(-0.5, n), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5 if n <= ANNOTATE_MAX_LAYERS else 0.5)
    ax.tick_params(which="minor", length=0)
    if n > ANNOTATE_MAX_LAYERS:
        return
    size = 9 if n <= 12 else 7
    for (row, col), value in np.ndenumerate(matrix):
        if np.isnan(value):
            ax.text(col, row, "–", ha="center", va="center", fontsize=size, color="#555555")
            continue
        if hide_zero and value == 0:
            continue
        r, g, b, _ = cmap(norm(value))
        color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.55 else "black"
        ax.text(col, row, format(value, fmt), ha="center", va="center", fontsize=size, color=color)


def _save(fig: Figure, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))


def plot_gate_map(gates: Mapping[str, Any], path: str | Path, num_layers: int | None = None) -> Path:
    """Side-by-side heatmaps of how often each slot was chosen and how the Fisher scored it."""
    freq = activation_frequency(gates, num_layers)
    score = mean_normalized_score(gates, num_layers)
    n = freq.shape[0]
    fig = Figure(figsize=(9.0, max(3.6, 0.3 * n + 1.8)), layout="constrained")
    ax_freq, ax_score = fig.subplots(1, 2)
    _heatmap(fig, ax_freq, freq, "Blues", 1.0, "fraction of selections active", ".2f", hide_zero=True)
    per_type = "  ·  ".join(f"{t} {c:.1f}" for t, c in zip(SLOT_TYPES, freq.sum(axis=0), strict=True))
    fig.supxlabel(f"mean active slots per selection — {per_type}", fontsize=10)
    ax_freq.set_title("(a) activation frequency", pad=10)
    vmax = float(np.nanmax(score)) if np.isfinite(score).any() else 1.0
    _heatmap(fig, ax_score, score, "viridis", vmax, "mean normalised score", ".3f")
    ax_score.set_title("(b) mean normalised Fisher score", pad=10)
    k = gates.get("k", "?")
    selector = gates.get("selector", "?")
    count = len(_selections(gates))
    fig.suptitle(f"Gate map — k={k}, selector={selector}, {count} selection{'s' * (count != 1)}")
    return _save(fig, path)


def plot_gate_maps(gates_by_name: Mapping[str, Mapping[str, Any]], path: str | Path, title: str) -> Path:
    """Activation frequencies of several gated runs side by side (one panel each, same layer axis)."""
    if not gates_by_name:
        raise UserError("no gate histories to plot")
    n = max(infer_num_layers(g) for g in gates_by_name.values())
    fig = Figure(figsize=(3.6 * len(gates_by_name), max(3.6, 0.3 * n + 1.8)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(gates_by_name)))
    for ax, (name, gates) in zip(axes, gates_by_name.items(), strict=True):
        _heatmap(fig, ax, activation_frequency(gates, n), "Blues", 1.0, "fraction of selections active", ".2f",
                 hide_zero=True)
        ax.set_title(f"{name}\nk={gates.get('k', '?')}, selector={gates.get('selector', '?')}", pad=10, fontsize=10)
    fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------- training curves


def _num(text: str | None) -> float | None:
    """A CSV cell as a float; None for the empty, NaN or garbled cells of sparse logger rows."""
    try:
        value = float(text or "nan")
    except ValueError:
        return None
    return None if math.isnan(value) else value


def read_log_series(csv_path: str | Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric from a sparse Lightning CSVLogger file, skipping empty cells."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: training log not found")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "step" not in (reader.fieldnames or []):
            raise UserError(f"{csv_path}: no 'step' column, not a Lightning CSVLogger file")
        pairs = [(_num(row.get("step")), _num(row.get(column))) for row in reader]
    points = [(s, v) for s, v in pairs if s is not None and v is not None]
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def smooth(values: np.ndarray) -> np.ndarray:
    """Bias-corrected exponential moving average whose span grows with the series length."""
    alpha = 2.0 / (max(1, len(values) // 20) + 1)
    out = np.empty_like(values, dtype=float)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        acc = (1 - alpha) * acc + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = acc / weight
    return out


def plot_training_curves(csv_path: str | Path, path: str | Path, title: str | None = None) -> Path:
    """Train loss (raw faint + smoothed) above validation mIoU, sharing the step axis."""
    loss_steps, loss = read_log_series(csv_path, "train/loss")
    val_steps, val = read_log_series(csv_path, "val/mIoU")
    if not len(loss) and not len(val):
        raise UserError(f"{csv_path}: no train/loss or val/mIoU values logged")
    fig = Figure(figsize=(8.0, 6.0), layout="constrained")
    ax_loss, ax_val = fig.subplots(2, 1, sharex=True)
    if len(loss):
        ax_loss.plot(loss_steps, loss, color="tab:blue", alpha=0.25, linewidth=0.8, label="raw")
        ax_loss.plot(loss_steps, smooth(loss), color="tab:blue", linewidth=1.8, label="smoothed")
        ax_loss.legend(loc="upper right")
    else:
        ax_loss.text(0.5, 0.5, "train/loss not logged", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set_ylabel("train loss")
    ax_loss.grid(alpha=0.3)
    if len(val):
        ax_val.plot(val_steps, val, color="tab:orange", marker="o", markersize=3.5, linewidth=1.5)
        best = int(np.argmax(val))
        ax_val.plot(val_steps[best], val[best], marker="*", markersize=13, color="tab:red")
        ax_val.annotate(f"best {val[best]:.2f} @ step {val_steps[best]:.0f}", (val_steps[best], val[best]),
                        textcoords="offset points", xytext=(6, -14), fontsize=9)
    else:
        ax_val.text(0.5, 0.5, "val/mIoU not logged", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set_ylabel("val mIoU (source)")
    ax_val.set_xlabel("step")
    ax_val.grid(alpha=0.3)
    fig.suptitle(f"Training curves — {title or Path(csv_path).parent.parent.name}")
    return _save(fig, path)


# ----------------------------------------------------------------------------- per-class IoU


def plot_per_class_iou(runs: Mapping[str, Mapping[str, Any]], domain: str, path: str | Path) -> Path:
    """Grouped bars: one group per class, one bar per run; classes a run never saw are left blank."""
    per_run = {
        name: m["domains"][domain]
        for name, m in runs.items()
        if isinstance(m.get("domains"), Mapping) and domain in m["domains"]
    }
    if not per_run:
        raise UserError(f"no run has results for domain {domain!r}")
    classes = list(dict.fromkeys(c for d in per_run.values() for c in d.get("per_class_iou", {})))
    if not classes:
        raise UserError(f"no per-class IoU recorded for domain {domain!r}")
    width = 0.8 / len(per_run)
    fig = Figure(figsize=(max(7.0, 0.35 * len(classes) * len(per_run) + 2.5), 4.5), layout="constrained")
    ax = fig.subplots()
    palette = colormaps["tab10" if len(per_run) <= 10 else "tab20"]
    annotate = len(classes) * len(per_run) <= 40
    for i, (name, res) in enumerate(per_run.items()):
        values = [res.get("per_class_iou", {}).get(c) for c in classes]
        x = np.arange(len(classes)) + (i - (len(per_run) - 1) / 2) * width
        heights = np.array([math.nan if v is None else float(v) for v in values])
        miou = res.get("mIoU")
        label = name if miou is None else f"{name} (mIoU {miou:.1f})"
        bars = ax.bar(x, heights, width, label=label, color=palette(i % palette.N))
        if annotate:
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        for xi in x[np.isnan(heights)]:
            ax.text(xi, 1, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="#777777")
    ax.set_xticks(range(len(classes)), classes, rotation=30 if len(classes) > 6 else 0, ha="right"
                  if len(classes) > 6 else "center")
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylim(0, 105)
    ax.set_ylabel("IoU (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"Per-class IoU — {domain}")
    return _save(fig, path)


# ----------------------------------------------------------------------------- masks


def _lut(palette: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    colors = np.asarray(palette, dtype=np.uint8)
    if colors.ndim != 2 or colors.shape[1] != 3 or not 0 < len(colors) <= 256:
        raise UserError(f"palette must be 1..256 RGB triples, got shape {colors.shape}")
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(colors)] = colors
    return lut


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """HxW class mask → HxWx3 RGB; labels beyond the palette (e.g. ignore 255) come out black."""
    if mask.ndim != 2:
        raise UserError(f"mask must be HxW, got shape {mask.shape}")
    return _lut(palette)[mask.astype(np.uint8, copy=False)]


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    palette: Sequence[Sequence[int]] | np.ndarray,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Blend class colours over an RGB image; ignored pixels keep the image so context stays visible."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != mask.shape:
        raise UserError(f"image {image.shape} and mask {mask.shape} must be HxWx3 and HxW of one size")
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colorize(mask, palette).astype(np.float32)
    out = image.copy()
    keep = mask != ignore_index
    out[keep] = np.clip(np.rint(blend[keep]), 0, 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- domain adaptation


def plot_pseudo_confidence(csv_path: str | Path, path: str | Path, threshold: float) -> Path:
    """DACS's teacher over training: mean pseudo-label confidence and the share of pixels above τ."""
    steps, confidence = read_log_series(csv_path, "dacs/confidence")
    share_steps, share = read_log_series(csv_path, "dacs/confident_share")
    if not len(confidence):
        raise UserError(f"{csv_path}: no dacs/confidence values logged")
    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, confidence, color="tab:blue", linewidth=1.5, label="mean teacher confidence")
    ax.plot(share_steps, share, color="tab:green", linewidth=1.5, label=f"share of pixels above τ = {threshold}")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.suptitle("Pseudo-labels on the unlabelled target images")
    return _save(fig, path)
