"""``crossearth-gate``: one entry point with subcommands (each in its own module under ``commands/``). User
errors print one line and exit 2; a write the file system refused (full disk, I/O error) prints one line and
exits 1; only the known library warnings are muted."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Any

from .commands import COMMANDS
from .util.atomic import write_failure
from .util.errors import UserError, WriteError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossearth-gate",
        description="Fisher-guided adaptive tuning of frozen ViTs for cross-domain remote-sensing segmentation.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.register(sub)
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


def check_outputs(args: argparse.Namespace, out_files: tuple[str, ...]) -> None:
    """Refuse an output under a regular file or in an unwritable place now, before any work.

    ``out_files`` are the command's options that name files; every other ``--out`` is a folder."""
    from .util.outputs import check_out_file, check_out_folder

    if "out" not in out_files and getattr(args, "out", None) is not None:
        check_out_folder(args.out)
    for name in out_files:
        if getattr(args, name) is not None:
            check_out_file(getattr(args, name), f"--{name}")


def run(args: argparse.Namespace) -> int:
    command = COMMANDS[args.command]
    check_outputs(args, command.OUT_FILES)
    command.run(args)
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
