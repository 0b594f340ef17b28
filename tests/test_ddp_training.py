"""Two CPU processes (gloo) train with the gate under Lightning DDP: same active set, no DDP errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.cli import fit_argv, run_cli
from support.runs import labelled_pixels

pytestmark = pytest.mark.ddp


def test_two_process_ddp_training_with_gate(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc = run_cli(*fit_argv(out, "train.max_steps=4", "train.strategy=ddp", "train.devices=2",
                             "train.accelerator=cpu"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gates = json.loads((out / "gates.json").read_text())
    # check_ranks_agree() raises inside the callback if the ranks' active sets differ after a selection
    assert [s["step"] for s in gates["selections"]] == [0, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["world_size"] == 2
    # the tested checkpoint (the best on source validation) runs with the selection in force at its step
    in_force = [sel for sel in gates["selections"] if sel["step"] < gates["evaluated_step"]][-1]
    assert metrics["run"]["active"] == in_force["active"]
    assert set(metrics["domains"]) == {"source_val", "tile_5"}
    # every target pixel counted exactly once although 9 images do not split evenly over 2 ranks
    assert metrics["domains"]["tile_5"]["pixels"] == labelled_pixels(5)
