"""2-process DDP (gloo): stop, resume, and let the gate switch on slots that were off at the restart.

DDP registers only the parameters that need grad when it wraps the model; a resumed run wraps it with
the checkpoint's active set. The slots switched on afterwards must still be averaged across ranks: the
gate callback compares a digest of the head and every slot across ranks at each selection and at the
end of training, and fails the run if they differ.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support.cli import fit_argv, run_cli

pytestmark = pytest.mark.ddp

DDP = ["train.strategy=ddp", "train.devices=2", "train.accelerator=cpu", "gate.selector=random"]


def fit(out: Path, steps: int) -> subprocess.CompletedProcess[str]:
    return run_cli(*fit_argv(out, *DDP, f"train.max_steps={steps}"), cwd=out.parent)


@pytest.mark.slow
def test_slots_switched_on_after_a_ddp_resume_stay_in_sync(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    first = fit(out, 4)
    assert first.returncode == 0, first.stderr[-3000:]
    at_restart = json.loads((out / "gates.json").read_text())["selections"][-1]["active"]

    second = fit(out, 8)
    assert second.returncode == 0, second.stderr[-3000:]  # a digest mismatch between ranks fails the run
    assert "resuming" in second.stderr
    gates = json.loads((out / "gates.json").read_text())
    assert [s["step"] for s in gates["selections"]] == [0, 2, 4, 6]
    switched_on = {slot for s in gates["selections"][2:] for slot in s["active"]} - set(at_restart)
    assert switched_on, "the test needs a slot that was off when DDP wrapped the resumed model"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["world_size"] == 2
