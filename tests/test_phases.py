"""fit's phases: recorded in metrics.json, printed one line each at the end, adding up to the wall time."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from crossearth_gate.cli import main
from crossearth_gate.training.phases import PHASES, PhaseClock
from crossearth_gate.util.console import phase_lines
from support.tiny import TINY


def test_inner_phases_are_not_counted_twice() -> None:
    clock = PhaseClock()
    with clock.phase("test", inner=("test samples",)):
        with clock.phase("test samples"):
            time.sleep(0.02)
    assert clock.seconds["test samples"] >= 0.02
    assert 0 <= clock.seconds["test"] < clock.seconds["test samples"], "the samples' time left the test's"
    with pytest.raises(ValueError, match="unknown phase"):
        clock.add("lunch", 1.0)
    lines = phase_lines({"phases_s": {"set-up": 1.0, "training steps": 3.0}, "wall_s": 4.0})
    assert lines == ["set-up               1.0 s   25.0 %", "training steps       3.0 s   75.0 %",
                     "wall time            4.0 s"]


def test_a_gated_fit_records_and_prints_its_phases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    start = time.perf_counter()
    assert main(["fit", "--config", "demo", "--out", str(out), *TINY, "train.max_steps=2", "train.val_every=1",
                 "gate.every=1", "gate.k=2"]) == 0
    elapsed = time.perf_counter() - start
    record = json.loads((out / "metrics.json").read_text())["phases"]
    phases = record["phases_s"]
    assert list(phases) == [p for p in PHASES if p in phases]
    assert {"set-up", "training steps", "gate", "validation", "test", "test samples", "artefacts"} <= set(phases)
    assert all(s >= 0 for s in phases.values()) and phases["gate"] > 0 and phases["validation"] > 0
    # the phases partition fit's time up to metrics.json (rounding to ms aside), inside the command's time
    assert sum(phases.values()) <= record["wall_s"] + 0.01 * len(phases)
    assert sum(phases.values()) >= 0.9 * record["wall_s"]
    assert record["wall_s"] <= elapsed
    printed = capsys.readouterr().out
    for name in phases:
        assert sum(bool(re.match(rf"{name}\s+[\d.]+ s ", line)) for line in printed.splitlines()) == 1, name
    assert "wall time" in printed
