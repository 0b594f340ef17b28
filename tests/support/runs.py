"""Finished and killed runs, read back: the exact-resume machinery and independent counts to check runs with."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from crossearth_gate.config.schema import DEMO_DATA
from support.cli import cli_command, run_cli
from support.tiny import tiny_run

RESUME_SETTINGS = tiny_run("resume")
"""The demo run with 13 steps over 3 batches an epoch: kills land mid-epoch and on epoch ends."""


def resume_command(out: Path, extra: list[str]) -> list[str]:
    """The child-process ``fit`` of an exact-resume test (the same command for the first start and the resume)."""
    return cli_command("fit", "--config", "demo", "--out", out, *RESUME_SETTINGS, *extra)


def resume_fit(out: Path, extra: list[str], env: dict[str, str] | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """That fit run to its end in a child process, with this process's thread count unless ``env`` says else."""
    return run_cli("fit", "--config", "demo", "--out", out, *RESUME_SETTINGS, *extra, env=env or same_threads_env(),
                   timeout=timeout)


def checkpoint_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
    except (OSError, EOFError, RuntimeError, KeyError):
        return None


def same_threads_env() -> dict[str, str]:
    """The environment for a fit subprocess that computes as this process does: CPU kernels sum in an order
    that depends on the thread count, so a run resumed with other threads differs in the last bits."""
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def run_killed(out: Path, extra: list[str], after_step: int, env: dict[str, str] | None = None) -> None:
    """Start the fit, SIGKILL it (and any DDP ranks it launched) once its last.ckpt is at ``after_step`` or later."""
    proc = subprocess.Popen(resume_command(out, extra), env=env or same_threads_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    last = out / "checkpoints" / "last.ckpt"
    try:
        while proc.poll() is None:
            step = checkpoint_step(last) if last.is_file() else None
            if step is not None and step >= after_step:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {proc.stderr.read()!r}"
    assert not (out / "metrics.json").exists()


def outcome(out: Path) -> dict[str, Any]:
    """Everything a finished run leaves that must not depend on having been killed."""
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["timing"], metrics["phases"], metrics["run"]["checkpoint"]  # wall-clock figures differ by nature
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {
        "metrics": metrics,
        "gates": json.loads((out / "gates.json").read_text()),
        "csv": (out / "logs" / "metrics.csv").read_text(),
        "trainable": load_file(str(out / "trainable.safetensors")),
        "weights": last["state_dict"],
        "optimizer": last["optimizer_states"],
        "step": last["global_step"],
    }


def csv_rows(out: Path) -> list[dict[str, str]]:
    """The CSV's rows without their empty cells (the header grows as new metrics appear)."""
    with (out / "logs" / "metrics.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal to the bit, recursively (tensors by dtype and value)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def labelled_pixels(tile: int) -> int:
    """Independent count: the non-ignored pixels of every mask of a demo tile."""
    from crossearth_gate.data import DomainSpec, get_dataset_info, list_pairs, read_mask

    info = get_dataset_info("dubai")
    pairs = list_pairs(DomainSpec("dubai", str(DEMO_DATA / "dubai"), tiles=[tile]))
    return sum(int((read_mask(mask, info) != 255).sum()) for _, mask in pairs)
