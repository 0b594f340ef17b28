"""How many images does one Fisher selection need? The top-k set from N images against the one from many.

Why: a selection costs one forward/backward per scored image (``gating/fisher.py``), so the number of
samples M is the selection's price. Fewer samples are only worth it if the chosen set barely moves. This
script scores every slot on each of ``--images`` training crops separately (the gate's own per-sample
Fisher, one image at a time), then, for each N, draws many random N-image subsets and compares the top-k
set of their mean score with the reference set of the other crops:

* ``overlap``: the share of the reference top-k that the N-image set keeps (1 = the same set), the
  reference being the mean over the crops the set did not use;
* ``pair_overlap``: the share two disjoint N-image sets agree on (two selections with fresh samples);
* ``mass``: the reference (left-out crops', per-type normalised) score of the N-image set over that of the
  reference set: how much Fisher information a noisier choice gives up (1 = none).

States: the model as a run starts (pretrained backbone, slots at their initial values) and, per
``--checkpoint``, a trained run's weights.

    python scripts/fisher_sample_stability.py --config demo --images 48 \
        --checkpoint runs/converged/runs/A/fisher_lr1e-3/seed0/checkpoints/last.ckpt \
        --out benchmarks/fisher_sample_stability.json --figure docs/images/fisher_sample_stability.png \
        "model.head_kwargs={fuse_kernel: 3}"   # the study's checkpoints have the 3x3 fusion
"""

from __future__ import annotations

import argparse
import itertools
import random
import shlex
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from crossearth_gate.config.schema import load_config  # noqa: E402
from crossearth_gate.gating.fisher import slot_fisher  # noqa: E402
from crossearth_gate.gating.selection import normalize_per_type, resolve_k, top_k  # noqa: E402
from crossearth_gate.training.checkpoint_io import load_trained_weights  # noqa: E402
from crossearth_gate.training.losses import fisher_loss  # noqa: E402
from crossearth_gate.training.run import build_datamodule  # noqa: E402
from crossearth_gate.training.task import build_segmentor, input_kernels  # noqa: E402
from crossearth_gate.util.atomic import atomic_write_json  # noqa: E402
from crossearth_gate.util.errors import UserError  # noqa: E402

SAMPLE_COUNTS = (1, 2, 4, 6, 8, 12, 16)


def per_image_scores(model: torch.nn.Module, datamodule, images: int, seed: int) -> list[dict[str, float]]:
    """Raw per-slot Fisher of each of ``images`` augmented source training crops, one image at a time."""
    scored, loss = fisher_loss(model)
    scores = []
    torch.manual_seed(seed)
    for epoch in itertools.count():  # more passes than one over a small set: every pass crops afresh
        for batch in datamodule.fisher_dataloader(1, seed=seed + epoch):
            pair = [(batch["image"], batch["mask"])]
            scores.append(slot_fisher(scored, model.toolbox, pair, loss, num_samples=1).raw)
            if len(scores) == images:
                return scores
    raise AssertionError("unreachable")


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.fmean(row[name] for row in rows) for name in rows[0]}


def chosen(rows: list[dict[str, float]], k: int) -> set[str]:
    return set(top_k(normalize_per_type(mean_scores(rows)), k))


def stability(rows: list[dict[str, float]], k: int, subsets: int, seed: int) -> dict[str, dict[str, float]]:
    """Per N: mean and 5th percentile of overlap, pair_overlap and mass over ``subsets`` random draws.

    The reference of each draw is the images the draw's first N-image set left out, so a set is never
    compared with a mean it is part of."""
    rng = random.Random(seed)
    out: dict[str, dict[str, float]] = {}
    for n in SAMPLE_COUNTS:
        if 2 * n > len(rows):
            continue
        overlap, pair, mass = [], [], []
        for _ in range(subsets):
            draw = rng.sample(range(len(rows)), 2 * n)
            rest = [row for i, row in enumerate(rows) if i not in draw[:n]]
            reference_scores = normalize_per_type(mean_scores(rest))
            reference = set(top_k(reference_scores, k))
            first = chosen([rows[i] for i in draw[:n]], k)
            second = chosen([rows[i] for i in draw[n:]], k)
            overlap.append(len(first & reference) / k)
            pair.append(len(first & second) / k)
            best = sum(reference_scores[name] for name in reference)
            mass.append(sum(reference_scores[name] for name in first) / best)
        out[str(n)] = {f"{name}_{stat}": value for name, values in
                       (("overlap", overlap), ("pair_overlap", pair), ("mass", mass))
                       for stat, value in (("mean", statistics.fmean(values)),
                                           ("p05", sorted(values)[int(0.05 * len(values))]))}
    return out


def figure(results: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for state, per_n in results.items():
        counts = [int(n) for n in per_n]
        for ax, metric in zip(axes, ("overlap", "pair_overlap", "mass"), strict=True):
            ax.plot(counts, [per_n[str(n)][f"{metric}_mean"] for n in counts], marker="o", label=state)
            ax.fill_between(counts, [per_n[str(n)][f"{metric}_p05"] for n in counts],
                            [per_n[str(n)][f"{metric}_mean"] for n in counts], alpha=0.15)
    titles = ("kept of the reference top-k", "agreement of two fresh selections", "reference score of the set")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("images per selection (N)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0.5, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Fisher selection from N images: mean and 5th percentile (shaded) over random draws", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="demo")
    p.add_argument("--images", type=int, default=48, help="crops scored one by one (the reference set)")
    p.add_argument("--subsets", type=int, default=2000, help="random N-image draws per N")
    p.add_argument("--checkpoint", action="append", default=[], type=Path, help="a trained state (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--figure", type=Path)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    model = build_segmentor(cfg, len(cfg.data.source.info.classes), input_kernels(cfg))
    k = resolve_k(cfg.gate.k, len(model.toolbox.slot_names))
    datamodule = build_datamodule(cfg, model.backbone.info.mean, model.backbone.info.std)
    datamodule.setup("fit")
    states = {"start of training": None, **{f"end of {c.parts[-4]} {c.parts[-3]}" if len(c.parts) > 4 else str(c): c
                                            for c in args.checkpoint}}
    results, selections, per_image = {}, {}, {}
    for label, checkpoint in states.items():
        if checkpoint is not None:
            state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
            try:
                load_trained_weights(model, state, checkpoint)
            except UserError as err:
                raise SystemExit(str(err)) from None
        rows = per_image_scores(model, datamodule, args.images, args.seed)
        results[label] = stability(rows, k, args.subsets, args.seed)
        selections[label] = sorted(chosen(rows, k))
        per_image[label] = rows
        print(label, {n: round(v["overlap_mean"], 3) for n, v in results[label].items()}, flush=True)
    command = shlex.join(["python", *sys.argv])
    atomic_write_json(args.out, {"command": command, "config": args.config, "overrides": args.overrides, "k": k,
                                 "images": args.images, "subsets": args.subsets, "reference_sets": selections,
                                 "results": results, "per_image_raw_scores": per_image})
    if args.figure:
        figure(results, args.figure)


if __name__ == "__main__":
    main()
