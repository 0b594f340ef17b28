"""Exact resume: a tiny fit SIGKILLed mid-run and started again ends exactly as an uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from crossearth_gate.cli import main
from test_cli_e2e import TINY

# 3 batches per epoch: the kills land mid-epoch and on epoch ends; selections every 2 steps
SETTINGS = [*TINY, "train.max_steps=13", "train.val_every=3", "train.log_every=1"]
CASES = {
    "fisher-val": ["gate.selector=fisher"],
    "fisher-noval": ["gate.selector=fisher", "data.val_fraction=0"],
    "random-val": ["gate.selector=random"],
    "random-noval": ["gate.selector=random", "data.val_fraction=0"],
}


def command(out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "crossearth_gate.cli", "fit", "--config", "demo", "--out", str(out),
            *SETTINGS, *extra]


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
    proc = subprocess.Popen(command(out, extra), env=env or same_threads_env(), stdout=subprocess.DEVNULL,
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
    del metrics["timing"], metrics["run"]["checkpoint"]
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


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_killed_run_resumes_exactly(case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    extra = CASES[case]
    reference = tmp_path / "uninterrupted"
    assert main(["fit", "--config", "demo", "--out", str(reference), *SETTINGS, *extra]) == 0

    killed = tmp_path / "killed"
    run_killed(killed, extra, after_step=4)
    killed_at = checkpoint_step(killed / "checkpoints" / "last.ckpt")
    rows_before = csv_rows(killed)
    assert main(["fit", "--config", "demo", "--out", str(killed), *SETTINGS, *extra]) == 0  # the same command
    assert f"resuming {killed} from step {killed_at}" in caplog.text

    expected, got = outcome(reference), outcome(killed)
    assert_same(expected, got)
    rows_after = csv_rows(killed)
    assert {row["step"] for row in rows_after if row.get("train/loss")} == {str(s) for s in range(13)}
    kept = [row for row in rows_before if int(row["step"]) < killed_at]
    assert kept and all(row in rows_after for row in kept), "rows logged before the kill are kept"
    assert not list(killed.rglob("*.pending")) and not list(killed.rglob("*-v1.ckpt"))
