"""How sure must the DACS teacher be? Pseudo-label share and accuracy against the confidence threshold τ.

Why: DACS weights the mixed target loss by the share of target pixels whose EMA-teacher confidence (max
softmax) exceeds τ (``adaptation.confidence``, 0.968 from 19-class Cityscapes). A teacher that rarely
passes τ switches adaptation off; a τ so low that wrong labels pass teaches the student its own mistakes.
This script measures, per τ, how many pixels pass and how often those pseudo-labels are right, using the
finished run's teacher (its EMA weights when the checkpoint holds them, else the student) exactly as in
training: the model in eval mode on crops of ``data.crop_size``, then ``head.probabilities``.

* Source: the held-out source validation images (``source_val``, labelled): share and accuracy above τ.
* Target: the unlabelled target images (``data.unlabelled_target``): share above τ, and, as a DIAGNOSTIC
  ONLY, accuracy against the labels on disk. Target labels never choose τ.

Crops: every image cut into the non-overlapping ``crop_size`` tiles that fit whole (a strip narrower than a
crop at the right and bottom edges is left out), so the result is deterministic; or, with ``--random-crops N``,
N seeded crops per image drawn by the run's own training transform (random scale in ``data.scale_range``,
flips, turns, black padding), the crops the teacher labels in training. No-data pixels
(``has_data``) count nowhere; label 255 counts in shares (they need no label) but not in accuracies.

The rule: the smallest τ of the grid whose source-validation accuracy above τ is >= 0.90.

    python scripts/pseudo_label_threshold.py runs/converged/runs/D/dacs_lr1e-3/seed0 \\
        --out benchmarks/pseudo_label_threshold.json --figure docs/images/pseudo_label_threshold.png
    python scripts/pseudo_label_threshold.py runs/converged/runs/D/dg_lr1e-3/seed0 --target-config dubai_da \\
        --out benchmarks/pseudo_label_threshold_dg.json
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from crossearth_gate.adaptation.pseudo import has_data, pseudo_labels  # noqa: E402
from crossearth_gate.adaptation.teacher import EMATeacher  # noqa: E402
from crossearth_gate.config.schema import RunConfig, load_config  # noqa: E402
from crossearth_gate.data.catalog import list_pairs  # noqa: E402
from crossearth_gate.data.datasets import SegmentationDataset  # noqa: E402
from crossearth_gate.training.checkpoint_io import load_trained_weights  # noqa: E402
from crossearth_gate.training.run import build_datamodule  # noqa: E402
from crossearth_gate.training.task import build_segmentor, input_kernels  # noqa: E402
from crossearth_gate.util.atomic import atomic_write, atomic_write_json  # noqa: E402
from crossearth_gate.util.errors import UserError  # noqa: E402
from crossearth_gate.util.labels import IGNORE_INDEX  # noqa: E402

GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.968)
CURRENT = 0.968  # DACS's τ, the configs' adaptation.confidence
REQUIRED_ACCURACY = 0.90


# ---------------------------------------------------------------- model-free: tallies, table, rule
@dataclass
class Tally:
    """Pixel counts of one domain, added crop by crop (so no pixel array is kept).

    Shares count every pixel with data (a pseudo-label needs no label); accuracies count only those that
    also carry a label (not 255)."""

    taus: tuple[float, ...]
    pixels: int = 0
    confidence_sum: float = 0.0
    labelled: int = 0
    correct: int = 0
    above: list[int] = field(default_factory=list)
    labelled_above: list[int] = field(default_factory=list)
    correct_above: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for counts in (self.above, self.labelled_above, self.correct_above):
            counts.extend([0] * (len(self.taus) - len(counts)))

    def add(self, probabilities: Tensor, labels: Tensor, data: Tensor) -> None:
        """probabilities (B, C, H, W), labels (B, H, W) with 255 = no label, data (B, H, W) bool."""
        pseudo = pseudo_labels(probabilities, data, CURRENT)  # the training's own argmax and confidence
        confidence = pseudo.confidence[data]
        labelled = labels[data] != IGNORE_INDEX
        right = (pseudo.labels[data] == labels[data]) & labelled
        self.pixels += int(data.sum())
        self.confidence_sum += float(confidence.double().sum())
        self.labelled += int(labelled.sum())
        self.correct += int(right.sum())
        for i, tau in enumerate(self.taus):
            sure = confidence > tau  # strict, as pseudo_labels' weight
            self.above[i] += int(sure.sum())
            self.labelled_above[i] += int((sure & labelled).sum())
            self.correct_above[i] += int((sure & right).sum())


def _ratio(a: int | float, b: int | float) -> float:
    return a / b if b else math.nan


def table(tally: Tally) -> dict[str, Any]:
    """Overall numbers and one row per τ: share of data pixels above τ, accuracy of the labelled ones above τ."""
    return {
        "pixels": tally.pixels,
        "labelled_pixels": tally.labelled,
        "mean_confidence": _ratio(tally.confidence_sum, tally.pixels),
        "accuracy": _ratio(tally.correct, tally.labelled),
        "rows": [{"tau": tau, "share": _ratio(tally.above[i], tally.pixels),
                  "accuracy": _ratio(tally.correct_above[i], tally.labelled_above[i])}
                 for i, tau in enumerate(tally.taus)],
    }


def smallest_tau(rows: Sequence[dict[str, float]], required: float = REQUIRED_ACCURACY) -> float | None:
    """The smallest τ whose (source) accuracy above τ reaches ``required``; None when none does.

    A τ with no pixel above it (accuracy NaN) never qualifies."""
    passing = [row["tau"] for row in rows if not math.isnan(row["accuracy"]) and row["accuracy"] >= required]
    return min(passing) if passing else None


# ---------------------------------------------------------------- the run: config, model, teacher, data
def load_run(run_dir: Path, checkpoint: Path, target_config: str | None) -> tuple[RunConfig, str]:
    """The run's own resolved config, with ``data.unlabelled_target`` from another config if asked."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: no config.yaml (not a run directory)")
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: no such checkpoint")
    cfg = load_config(str(run_dir / "config.yaml"))
    origin = "the run's config"
    if target_config is not None:
        other = load_config(target_config).data.unlabelled_target
        if other is None:
            raise UserError(f"--target-config {target_config}: has no data.unlabelled_target")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, unlabelled_target=other))
        origin = f"data.unlabelled_target of {target_config}"
    return cfg, origin


def predictor(cfg: RunConfig, checkpoint: Path) -> tuple[Any, Any, str]:
    """The model, and a function images → probabilities: the checkpoint's EMA teacher when it holds one, else
    its student."""
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as err:  # any unreadable file is the user's input, not a bug
        raise UserError(f"{checkpoint}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise UserError(f"{checkpoint}: not a training checkpoint (no state_dict)")
    state = saved["state_dict"]
    model = build_segmentor(cfg, len(cfg.data.source.info.classes), input_kernels(cfg))
    teacher_state = {k.removeprefix("teacher."): v for k, v in state.items() if k.startswith("teacher.")}
    # built before the active set is restored, as the DACS task builds it: the names it averages stay the same
    teacher = EMATeacher(model, cfg.adaptation.ema_alpha) if teacher_state else None
    if "active_slots" in saved:  # weights and active set travel together (training/task.py)
        model.toolbox.set_active(saved["active_slots"])
    load_trained_weights(model, state, checkpoint)
    model.eval()
    if teacher is None:
        return model, (lambda images: model.head.probabilities(model(images))), "student (no teacher in the checkpoint)"
    teacher.load_state_dict(teacher_state)  # strict: the same averaged tensors as in training
    label = f"EMA teacher after {int(teacher.updates)} updates"
    return model, (lambda images: model.head.probabilities(teacher.predict(model, images))), label


def tiles(image: Tensor, mask: Tensor, size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The non-overlapping size×size tiles of a (C, H, W) image that fit whole, row by row."""
    _, height, width = image.shape
    for y in range(0, height - size + 1, size):
        for x in range(0, width - size + 1, size):
            yield image[:, y:y + size, x:x + size], mask[y:y + size, x:x + size]


def crops_of(dataset: SegmentationDataset, size: int, train: Any, per_image: int, seed: int
             ) -> Iterator[tuple[Tensor, Tensor]]:
    """(image, mask) crops: every whole tile of each image (``per_image`` 0), else ``per_image`` crops of each
    image drawn by the run's training transform ``train`` (scale, flips, turns: what the teacher sees in
    training), seeded."""
    if per_image == 0:
        for index in range(len(dataset)):
            sample = dataset[index]
            yield from tiles(sample["image"], sample["mask"], size)
        return
    drawn = SegmentationDataset(dataset.pairs, dataset.info, train, labelled=True)
    torch.manual_seed(seed)  # the transform draws from torch's global RNG
    for index in range(len(drawn)):
        for _ in range(per_image):
            sample = drawn[index]
            yield sample["image"], sample["mask"]


def measure(crops: Iterator[tuple[Tensor, Tensor]], predict: Any, mean: tuple[float, ...],
            std: tuple[float, ...], taus: tuple[float, ...], batch: int = 8) -> tuple[Tally, int]:
    """Tally of all ``crops``; also their number."""
    tally, count = Tally(taus), 0
    pending: list[tuple[Tensor, Tensor]] = []

    def flush() -> None:
        images = torch.stack([p[0] for p in pending])
        labels = torch.stack([p[1] for p in pending])
        with torch.no_grad():
            tally.add(predict(images), labels, has_data(images, mean, std))
        pending.clear()

    for crop in crops:
        pending.append(crop)
        count += 1
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return tally, count


# ---------------------------------------------------------------- output
def figure(source: dict[str, Any], target: dict[str, Any] | None, chosen: float | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, result, style in (("source val", source, "-"), ("target", target, "--")):
        if result is None:
            continue
        taus = [row["tau"] for row in result["rows"]]
        ax.plot(taus, [row["share"] for row in result["rows"]], style, color="tab:blue", marker="o",
                label=f"{name}: share above τ")
        extra = " (diagnostic)" if name == "target" else ""
        ax.plot(taus, [row["accuracy"] for row in result["rows"]], style, color="tab:orange", marker="s",
                label=f"{name}: accuracy above τ{extra}")
    ax.axvline(CURRENT, color="grey", linestyle=":", label=f"current τ = {CURRENT}")
    if chosen is not None:
        ax.axvline(chosen, color="tab:green", linestyle=":", label=f"rule's τ = {chosen}")
    ax.axhline(REQUIRED_ACCURACY, color="tab:red", linewidth=0.6, alpha=0.5)
    ax.set_xlabel("confidence threshold τ")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("teacher pseudo-labels: share and accuracy above τ", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _print(name: str, result: dict[str, Any], note: str = "") -> None:
    print(f"{name}: {result['crops']} crops, {result['pixels']} pixels, mean confidence "
          f"{result['mean_confidence']:.3f}, accuracy {result['accuracy']:.3f}{note}")
    for row in result["rows"]:
        print(f"  τ={row['tau']:<6} share {row['share']:.3f}  accuracy {row['accuracy']:.3f}")


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    if args.random_crops < 0:
        raise UserError(f"--random-crops must be >= 0, got {args.random_crops}")
    checkpoint = args.checkpoint or args.run_dir / "checkpoints" / "last.ckpt"
    cfg, target_origin = load_run(args.run_dir, checkpoint, args.target_config)
    taus = tuple(sorted(args.taus))
    model, predict, weights = predictor(cfg, checkpoint)
    datamodule = build_datamodule(cfg, model.backbone.info.mean, model.backbone.info.std)
    datamodule.setup("fit")
    transform = datamodule.eval_transform
    mean, std = transform.mean, transform.std
    size = cfg.data.crop_size
    val = datamodule.val_dataloader()
    if not isinstance(val, DataLoader):
        raise UserError(f"{args.run_dir}: the run has no source validation split (data.val_fraction 0, no data.val)")
    crops = partial(crops_of, size=size, train=datamodule.train_transform, per_image=args.random_crops,
                    seed=args.seed)
    tally, count = measure(crops(val.dataset), predict, mean, std, taus)
    source = {"crops": count, **table(tally)}
    _print("source val", source)
    target = None
    spec = cfg.data.unlabelled_target
    if spec is None:
        print("target: skipped (the config has no data.unlabelled_target; --target-config NAME takes one)")
    else:
        labelled = SegmentationDataset(list_pairs(spec, labelled=True), spec.info, transform, labelled=True)
        tally, count = measure(crops(labelled), predict, mean, std, taus)
        target = {"crops": count, "from": target_origin, **table(tally)}
        _print("target", target, "  [accuracies: DIAGNOSTIC, not used to choose τ]")
    chosen = smallest_tau(source["rows"])
    kept = None
    if chosen is not None and target is not None:
        kept = next(row["share"] for row in target["rows"] if row["tau"] == chosen)
    print(f"rule (smallest τ with source-val accuracy above τ >= {REQUIRED_ACCURACY}): τ = {chosen}"
          + (f", keeping {kept:.3f} of target pixels" if kept is not None else ""))
    seconds = time.perf_counter() - started
    atomic_write_json(args.out, {
        "command": shlex.join(["python", *sys.argv]),
        "run_dir": str(args.run_dir), "checkpoint": str(checkpoint), "weights": weights,
        "crops": (f"every image cut into the non-overlapping {size}x{size} tiles that fit whole"
                  if args.random_crops == 0 else f"{args.random_crops} crops of {size}x{size} per image drawn by the "
                  f"run's training transform (scale {list(cfg.data.scale_range)}, flips, turns), seed {args.seed}"),
        "source": source, "target": target,
        "target_accuracy_note": "diagnostic only: target labels are not used to choose τ",
        "rule": {"required_source_accuracy": REQUIRED_ACCURACY, "tau": chosen, "target_share_kept": kept},
        "seconds": round(seconds, 1),
    })
    if args.figure:
        figure(source, target, chosen, args.figure)
    print(f"wrote {args.out} ({seconds:.0f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a finished run directory")
    p.add_argument("--checkpoint", type=Path, help="default: RUN_DIR/checkpoints/last.ckpt")
    p.add_argument("--target-config", help="take data.unlabelled_target from this config (e.g. dubai_da for a DG run)")
    p.add_argument("--taus", type=float, nargs="+", default=list(GRID))
    p.add_argument("--random-crops", type=int, default=0, metavar="N",
                   help="N crops per image by the run's training transform instead of the whole tiles (default 0)")
    p.add_argument("--seed", type=int, default=0, help="for --random-crops")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--figure", type=Path)
    args = p.parse_args()
    try:
        run(args)
    except UserError as err:
        print(f"pseudo_label_threshold: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
