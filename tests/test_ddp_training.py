"""Two CPU processes (gloo) train with the gate under Lightning DDP: same active set, no DDP errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from crossearth_gate.config.schema import DEMO_DATA
from test_cli_e2e import TINY


def test_two_process_ddp_training_with_gate(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "crossearth_gate.cli", "fit", "--config", "demo", "--out", str(out), *TINY,
           "train.max_steps=4", "train.strategy=ddp", "train.devices=2", "train.accelerator=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gates = json.loads((out / "gates.json").read_text())
    # check_ranks_agree() raises inside the callback if the ranks' active sets differ after a selection
    assert [s["step"] for s in gates["selections"]] == [0, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["world_size"] == 2
    assert metrics["run"]["active"] == gates["selections"][-1]["active"]
    assert set(metrics["domains"]) == {"source_val", "tile_5"}
    # every target pixel counted exactly once although 9 images do not split evenly over 2 ranks
    assert metrics["domains"]["tile_5"]["pixels"] == labelled_pixels(5)


def labelled_pixels(tile: int) -> int:
    """Independent count: the non-ignored pixels of every mask of a demo tile."""

    from crossearth_gate.data import DomainSpec, get_dataset_info, list_pairs, read_mask

    info = get_dataset_info("dubai")
    pairs = list_pairs(DomainSpec("dubai", str(DEMO_DATA / "dubai"), tiles=[tile]))
    return sum(int((read_mask(mask, info) != 255).sum()) for _, mask in pairs)
