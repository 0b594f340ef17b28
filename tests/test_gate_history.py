"""gates.json, params.trainable and the saved weights cover the whole training, not only up to the best
checkpoint that the test restores."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from crossearth_gate.cli import main
from support.tiny import TINY


def test_history_after_the_best_checkpoint_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # validation at steps 3, 6, 9 chooses the best checkpoint; selections go on at 10
    assert main(["fit", "--config", "demo", "--out", str(out), *TINY, "train.max_steps=11", "train.val_every=3"]) == 0
    gates = json.loads((out / "gates.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    steps = [s["step"] for s in gates["selections"]]
    assert steps == [0, 2, 4, 6, 8, 10]

    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert gates["evaluated_step"] == best["global_step"] < steps[-1]
    in_force = [s for s in gates["selections"] if s["step"] < gates["evaluated_step"]][-1]
    assert metrics["run"]["active"] == in_force["active"], "the tested model is the best checkpoint's"

    ever = {slot for s in gates["selections"] for slot in s["active"]}
    params = metrics["params"]
    assert params["trainable"] == params["head"] + sum(params["per_slot"][slot] for slot in ever)
    saved = {".".join(key.split(".")[2:4]) for key in load_file(str(out / "trainable.safetensors"))
             if key.startswith("toolbox.")}
    assert saved == ever
