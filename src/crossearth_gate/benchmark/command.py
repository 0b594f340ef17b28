"""Side-by-side cost of the training configurations on real selections: is gated training really cheaper?

One invocation, on real crops of the demo images and the given backbone weights:

1. **Set-up** (this process): train a few steps with every slot on, run the paper's Fisher selection on M
   demo images, calibrate the cost model and run the compute-aware selection at the given budget on the
   same scores; merge the selected models (LoRA folded in, inactive slots dropped); export the gated
   model to ONNX and start the workers: one process per training configuration — all-on, the paper's
   gate with the set it selected, the compute-aware gate with its set, LoRA only, full fine-tuning,
   frozen — and one per ``predict`` runner (PyTorch unmerged and merged, onnxruntime), each alive for
   the whole run, so its peak RSS is its own and its model is built once.
2. **Rounds**: every round measures everything once, one thing at a time — the Fisher selection (loop and
   vmap), merged vs bare inference, each configuration's median training step, each runner's
   ``predict`` of a large GeoTIFF — and computes every ratio against the SAME round's reference. A
   machine whose speed drifts (a shared one does, by 2x and more) then moves numerator and denominator
   together; the headline is the median over rounds with its min–max, and a ratio whose spread is wider
   than ±0.05 is flagged in one line.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..gating import Budget
from ..util.atomic import atomic_write_json, atomic_write_text
from ..util.errors import UserError
from .sets import check_against, read_sets, sets_record
from .spread import spreads, warning_line, wide
from .steps import StepMeasurer
from .workers import Worker

CONFIGS = ("all-on", "gated", "compute-aware", "lora", "full-finetune", "frozen")
GATE_K = 0.25  # the demo's and the paper's k: a quarter of the slots
OVERHEAD_N = 100  # re-selection interval of the headline selection-overhead ratio (the paper's DG setting)


@dataclass
class BenchSetup:
    """Everything a run depends on; ``command()`` reproduces it."""

    weights: str = "auto"
    backbone: str = "vit_small_patch14_dinov2"
    img_size: int = 224
    batch_size: int = 4
    steps: int = 5
    warmup_steps: int = 2
    select_after: int = 5
    every: int = OVERHEAD_N
    num_samples: int = 4
    step_fraction: float = 0.6
    rounds: int = 3
    predict_size: int = 1024
    threads: int = 0  # 0: torch's default
    sets: str | None = None  # a sets file (sets.py): time its sets instead of this run's selections

    def command(self, out: Path | None, profile: Path | None, select_only: bool = False) -> str:
        flags = [f"--{f.name.replace('_', '-')} {shlex.quote(str(getattr(self, f.name)))}"
                 for f in fields(self) if f.name not in ("threads", "sets")]
        flags += [f"--sets {shlex.quote(self.sets)}"] if self.sets else []
        flags += ["--select-only"] if select_only else []
        flags += [f"--out {shlex.quote(str(out))}"] if out else []
        flags += [f"--profile {shlex.quote(str(profile))}"] if profile else []
        return "crossearth-gate benchmark " + " ".join(flags)


@dataclass
class Selected:
    """The set-up phase's outcome: the selected sets and what the rounds re-time in this process."""

    model: Any
    fisher: list[Any]
    k: int
    gated: list[str]
    aware: list[str]
    scores: dict[str, float]
    cost: Any
    calibration_s: float
    budget_record: dict[str, Any]
    models: dict[str, Any]
    images: torch.Tensor
    masks: torch.Tensor
    spec: Any
    sets: dict[str, Any]
    probes: list[dict[str, Any]]


def select_sets(setup: BenchSetup, given: dict[str, Any] | None = None) -> Selected:
    """The real Fisher selection, the compute-aware one on the same scores, and the merged models.

    With ``given`` sets (sets.py) the selection and the calibration still run (the scores and the cost
    model price the given sets), but the given sets are the ones timed: two runs time identical sets.
    """
    from ..data import get_dataset_info
    from ..gating import FisherSelector, budgeted_top_k, resolve_k
    from ..gating.budget import budget_record
    from ..gating.calibration import fit_cost_model, time_probes, type_param_counts
    from ..heads.losses import per_sample_cross_entropy
    from ..model.artefacts import spec_of
    from ..model.merge import merge_for_inference
    from ..toolbox.slots import activated
    from ..training.run import build_datamodule
    from .measure import bench_config, build_model, optimizer_of, timed, train_step

    cfg = bench_config(setup.backbone, setup.weights, setup.img_size, setup.batch_size)
    model = build_model(cfg)
    info = model.backbone.info
    data = build_datamodule(cfg, info.mean, info.std)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))  # seeded: the same real crops every run
    images, masks = batch["image"], batch["mask"]
    toolbox = model.toolbox
    optimizer = optimizer_of(model)
    model.train()
    for _, batch in zip(range(setup.select_after), _forever(data), strict=False):
        train_step(model, optimizer, batch["image"], batch["mask"])
    k = resolve_k(GATE_K, len(toolbox.slot_names))
    fisher = [(b["image"], b["mask"]) for b in data.fisher_dataloader(setup.num_samples, seed=cfg.train.seed)]
    gated = FisherSelector("loop").select(model, toolbox, fisher, per_sample_cross_entropy, setup.num_samples, k, 0)
    (probes, probe_s), calibration_s = timed(
        lambda: time_probes(model, toolbox, images, masks, per_sample_cross_entropy), images.device)
    cost = fit_cost_model(probes, probe_s, type_param_counts(toolbox), toolbox.depth)
    budget = Budget(step_fraction=setup.step_fraction)
    aware = budgeted_top_k(gated.normalized, k, cost, budget)
    selected_here = sets_record(gated.active, aware, asdict(setup))
    if given is None:
        sets = {**selected_here, "source": "selected in this run"}
    else:
        check_against(given, setup.backbone, toolbox.slot_names)
        sets = {**given, "source": f"file {given['file']}", "selected_in_this_run": selected_here}
    chosen, aware = sets["gated"], sets["compute_aware"]
    models = {}
    for name, active in (("merged_gated", chosen), ("merged_compute_aware", aware)):
        with activated(toolbox, active):
            models[name] = merge_for_inference(model)
    dataset = get_dataset_info(cfg.data.source.dataset)
    with activated(toolbox, chosen):
        spec = spec_of(model, list(dataset.classes), [list(c) for c in dataset.palette], cfg.train.seed,
                       setup.img_size, cfg.model.head, cfg.model.head_channels, cfg.model.backbone_kwargs)
    toolbox.set_active([])
    models["bare"] = model.eval()  # the bare backbone + head; the selection rounds switch slots back off
    return Selected(model, fisher, k, chosen, aware, gated.normalized, cost, calibration_s,
                    budget_record(aware, gated.normalized, k, cost, budget), models, images, masks, spec, sets,
                    [{"active": p, "seconds": t, "predicted_s": cost.step_s(p)}
                     for p, t in zip(probes, probe_s, strict=True)])


def _forever(data: Any) -> Any:
    while True:
        yield from data.train_dataloader()


def selection_round(setup: BenchSetup, selected: Selected) -> dict[str, float]:
    """One timing of the same Fisher selection with each method (the loop is the default)."""
    from ..gating import FisherSelector
    from ..heads.losses import per_sample_cross_entropy
    from .measure import timed

    model, toolbox = selected.model, selected.model.toolbox
    model.train()
    seconds = {}
    for method in ("loop", "vmap"):
        _, seconds[method] = timed(lambda m=method: FisherSelector(m).select(
            model, toolbox, selected.fisher, per_sample_cross_entropy, setup.num_samples, selected.k, 0),
            selected.images.device)
    toolbox.set_active([])  # back to the bare model that ``inference_s`` times
    model.eval()
    return seconds


def start_step_workers(setup: BenchSetup, selected: Selected, profile: bool) -> dict[str, Worker]:
    actives = {"gated": selected.gated, "compute-aware": selected.aware}
    images, masks = selected.images.numpy(), selected.masks.numpy()
    workers: dict[str, Worker] = {}
    try:
        for config in CONFIGS:
            workers[config] = Worker(StepMeasurer, setup, config, actives.get(config), images, masks,
                                     profile and config == "all-on")
    except BaseException:
        for worker in workers.values():
            worker.kill()
        raise
    return workers


def interleaved_steps(workers: dict[str, Worker], steps: int, index: int) -> dict[str, list[float]]:
    """``steps`` passes, each timing ONE step of every configuration, the order rotating from pass to pass.

    Measured as blocks of consecutive steps, a configuration was up to a whole round (~30 s on a 2-core
    CPU) away from the all-on steps it is divided by, and the machine's speed drifted by up to 10 % between
    blocks; one step per configuration per pass keeps them seconds apart. A step right after its process
    idled measured 0.97–1.08 × the next ones (median 1.005): a small, even cost beside the drift (every
    step's time is kept in the JSON to check).
    """
    times: dict[str, list[float]] = {config: [] for config in CONFIGS}
    for step in range(steps):
        shift = (index * steps + step) % len(CONFIGS)
        for config in CONFIGS[shift:] + CONFIGS[:shift]:
            times[config].append(workers[config].measure()["step_s"])
    return times


def one_round(setup: BenchSetup, selected: Selected, workers: dict[str, Worker], predict: Any,
              index: int) -> dict[str, Any]:
    """Everything once, one at a time; the training steps interleaved (see ``interleaved_steps``)."""
    from .measure import inference_s

    selection = selection_round(setup, selected)
    inference = inference_s(selected.models, selected.images, setup.warmup_steps, setup.steps)
    times = interleaved_steps(workers, setup.steps, index)
    steps = {config: statistics.median(values) for config, values in times.items()}
    return {"selection_s": selection, "inference_s": inference, "step_s": steps, "step_times_s": times,
            "predict": predict.measure_round(index) if predict is not None else {}}


def round_ratios(record: dict[str, Any]) -> dict[str, float]:
    """Every ratio of one round, each against the same round's reference."""
    steps, inference, loop_s = record["step_s"], record["inference_s"], record["selection_s"]["loop"]

    def overhead(config: str) -> float:
        return loop_s / (OVERHEAD_N * steps[config] + loop_s)

    ratios = {f"{config.replace('-', '_')}_step_vs_all_on": steps[config] / steps["all-on"]
              for config in CONFIGS if config != "all-on"}
    ratios.update({
        "merged_inference_vs_bare": inference["merged_gated"] / inference["bare"],
        "merged_compute_aware_inference_vs_bare": inference["merged_compute_aware"] / inference["bare"],
        "selection_overhead_at_n100": overhead("gated"),
        "compute_aware_selection_overhead_at_n100": overhead("compute-aware"),
    })
    ratios.update({k: v for k, v in record["predict"].items() if k.startswith("predict_")})
    return ratios


def run_benchmark(setup: BenchSetup, profile: bool = False, given: dict[str, Any] | None = None) -> dict[str, Any]:
    from .predict import start_predict

    selected = select_sets(setup, given)
    workers = start_step_workers(setup, selected, profile)
    predict = None
    with tempfile.TemporaryDirectory(prefix="ceg-bench-") as folder:
        try:
            if setup.predict_size:
                predict = start_predict(selected.model, selected.spec, selected.images, Path(folder),
                                        setup.predict_size, setup.batch_size, setup.threads)
            rounds = [one_round(setup, selected, workers, predict, i) for i in range(setup.rounds)]
            rows = [workers[config].finish() for config in CONFIGS]
            predicted = predict.finish() if predict is not None else None
        except BaseException:
            for worker in workers.values():
                worker.kill()
            if predict is not None:
                predict.kill()
            raise
    table = rows[0].pop("profile", None)
    result = summarise(setup, selected, rows, rounds, predicted)
    if table is not None:
        result["profile"] = table
    return result


def summarise(setup: BenchSetup, selected: Selected, rows: list[dict[str, Any]], rounds: list[dict[str, Any]],
              predicted: dict[str, Any] | None) -> dict[str, Any]:
    """Medians over rounds with their spreads; rows with ratios against all-on (0.025 means 2.5 %)."""
    ratio_spreads = spreads([round_ratios(r) for r in rounds])
    step_spreads = spreads([r["step_s"] for r in rounds])
    by = {r["config"]: r for r in rows}
    for r in rows:
        name = r["config"]
        r["step_s"] = step_spreads[name]["median"]
        r["step_s_spread"] = [step_spreads[name]["min"], step_spreads[name]["max"]]
        key = f"{name.replace('-', '_')}_step_vs_all_on"
        r["step_vs_all_on"] = ratio_spreads[key]["median"] if key in ratio_spreads else 1.0
        r["step_vs_all_on_spread"] = ([ratio_spreads[key]["min"], ratio_spreads[key]["max"]]
                                      if key in ratio_spreads else [1.0, 1.0])
        r["activations_vs_all_on"] = r["saved_activation_mb"] / by["all-on"]["saved_activation_mb"]
        if name != "full-finetune":  # the cost model prices slot sets of a frozen backbone; frozen = no slot on
            r["predicted_step_vs_all_on"] = selected.cost.step_fraction(r["active"])
            r["prediction_error"] = r["predicted_step_vs_all_on"] - r["step_vs_all_on"]
    ratios = {name: s["median"] for name, s in ratio_spreads.items()}
    ratios["compute_aware_predicted_step_vs_all_on"] = selected.budget_record["step_fraction"]
    ratios["compute_aware_peak_rss_vs_full_finetune"] = (by["compute-aware"]["peak_rss_mb"]
                                                         / by["full-finetune"]["peak_rss_mb"])
    selection = spreads([r["selection_s"] for r in rounds])
    flagged = wide(ratio_spreads)
    result = {
        "setup": asdict(setup),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "threads": setup.threads or torch.get_num_threads()},
        "ratios": ratios,
        "ratio_spreads": ratio_spreads,
        "spread_warning": warning_line(flagged, setup.rounds),
        "rows": rows,
        "sets": selected.sets,
        "selection": {
            "k": selected.k, "num_samples": setup.num_samples, "every": setup.every,
            "gated_active": selected.gated, "normalized_scores": selected.scores,
            "methods": {m: {"seconds": s["median"], "seconds_spread": [s["min"], s["max"]],
                            "overhead_fraction": s["median"] / (setup.every * by["gated"]["step_s"] + s["median"])}
                        for m, s in selection.items()},
        },
        "compute_aware": {
            "budget": selected.budget_record, "cost_model": selected.cost.to_dict(),
            "calibration_s": selected.calibration_s, "probes": selected.probes,
        },
        "inference": {f"{name}_s": s["median"] for name, s in spreads([r["inference_s"] for r in rounds]).items()},
        "rounds": rounds,
    }
    if predicted is not None:
        rates = spreads([{k: v for k, v in r["predict"].items() if not k.startswith("predict_")} for r in rounds])
        throughput = {k: v for k, v in rates.items() if k.endswith("_megapixels_per_s")}
        result["predict"] = {**predicted, "megapixels_per_s": throughput,
                             "matmul_gflops_per_s": rates["matmul_gflops_per_s"]}
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"gated sets: {result['sets']['source']}",
        "",
        "| config | active slots | lowest active | trainable params | step (s) | × all-on (min–max) | "
        "predicted × all-on | saved activations (MB) | × all-on | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lowest = "–" if r["lowest_active_layer"] is None else r["lowest_active_layer"]
        low, high = r["step_vs_all_on_spread"]
        predicted = f"{r['predicted_step_vs_all_on']:.3f}" if "predicted_step_vs_all_on" in r else "–"
        lines.append(
            f"| {r['config']} | {r['active_slots']} | {lowest} | {r['trainable_params']:,} | {r['step_s']:.3f} | "
            f"{r['step_vs_all_on']:.3f} ({low:.3f}–{high:.3f}) | {predicted} | {r['saved_activation_mb']:.0f} | "
            f"{r['activations_vs_all_on']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    if "predict" in result:
        lines += ["", "| predict runner | megapixels/s (min–max) | peak RSS (MB) |", "|---|---:|---:|"]
        for name, record in result["predict"]["runners"].items():
            s = result["predict"]["megapixels_per_s"][f"{name}_megapixels_per_s"]
            lines.append(f"| {name} | {s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f}) | "
                         f"{record['peak_rss_mb']:.0f} |")
    lines.append("")
    for name, value in result["ratios"].items():
        s = result["ratio_spreads"].get(name)
        lines.append(f"{name}: {value:.3f}" + (f" ({s['min']:.3f}–{s['max']:.3f})" if s else ""))
    return "\n".join(lines)


def select_only(setup: BenchSetup, out: Path) -> None:
    """The set-up's selections only, written as a sets file for ``--sets``: nothing is timed."""
    selected = select_sets(setup)
    record = {**sets_record(selected.gated, selected.aware, asdict(setup)),
              "command": setup.command(out, None, select_only=True),
              "compute_aware_predicted_step_vs_all_on": selected.budget_record["step_fraction"],
              "normalized_scores": selected.scores, "cost_model": selected.cost.to_dict()}
    atomic_write_json(out, record)
    print(f"gated: {' '.join(selected.gated)}\ncompute-aware: {' '.join(selected.aware)}\nsaved {out}")


def benchmark_cli(args: argparse.Namespace) -> None:
    if args.io:
        from .io import io_cli

        return io_cli(args)
    if args.img_size < 14 or args.batch_size < 1 or args.steps < 1 or args.num_samples < 1 or args.rounds < 1:
        raise UserError("benchmark needs --img-size >= 14, --batch-size >= 1, --steps >= 1, --num-samples >= 1, "
                        "--rounds >= 1")
    if args.predict_size and args.predict_size < args.img_size:
        raise UserError(f"--predict-size {args.predict_size}: 0 (no predict section) or at least --img-size")
    Budget(step_fraction=args.step_fraction)  # a bad budget fails now, not after the selection phase
    if args.select_only and (args.sets is not None or args.out is None):
        raise UserError("--select-only writes the sets this run selects to --out: give --out, not --sets")
    given = read_sets(args.sets) if args.sets is not None else None  # a bad file fails before any work
    setup = BenchSetup(
        weights=args.weights, backbone=args.backbone, img_size=args.img_size, batch_size=args.batch_size,
        steps=args.steps, warmup_steps=args.warmup_steps, select_after=args.select_after, every=args.every,
        num_samples=args.num_samples, step_fraction=args.step_fraction, rounds=args.rounds,
        predict_size=args.predict_size, threads=torch.get_num_threads(),
        sets=None if args.sets is None else str(args.sets),
    )
    if args.select_only:
        return select_only(setup, args.out)
    if args.profile is not None:
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's child process: no GPU-probe errors
    result = run_benchmark(setup, profile=args.profile is not None, given=given)
    result["command"] = setup.command(args.out, args.profile)
    if args.profile is not None:
        header = f"# torch.profiler: one all-on training step, by self CPU time\n# {result['command']}\n\n"
        atomic_write_text(args.profile, header + result.pop("profile") + "\n")
        print(f"saved {args.profile}")
    print(format_table(result))
    if result["spread_warning"]:
        print(result["spread_warning"], file=sys.stderr)
    if args.out:
        atomic_write_json(args.out, result)
        print(f"saved {args.out}")
    print(f"reproduce: {result['command']}")
