"""Exact resume: a tiny fit SIGKILLed mid-run and started again ends exactly as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossearth_gate.cli import main
from support.runs import RESUME_SETTINGS, assert_same, checkpoint_step, csv_rows, outcome, run_killed

CASES = {
    "fisher-val": ["gate.selector=fisher"],
    "fisher-noval": ["gate.selector=fisher", "data.val_fraction=0"],
    "random-val": ["gate.selector=random"],
    "random-noval": ["gate.selector=random", "data.val_fraction=0"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_killed_run_resumes_exactly(case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    extra = CASES[case]
    reference = tmp_path / "uninterrupted"
    assert main(["fit", "--config", "demo", "--out", str(reference), *RESUME_SETTINGS, *extra]) == 0

    killed = tmp_path / "killed"
    run_killed(killed, extra, after_step=4)
    killed_at = checkpoint_step(killed / "checkpoints" / "last.ckpt")
    rows_before = csv_rows(killed)
    assert main(["fit", "--config", "demo", "--out", str(killed), *RESUME_SETTINGS, *extra]) == 0  # the same command
    assert f"resuming {killed} from step {killed_at}" in caplog.text

    expected, got = outcome(reference), outcome(killed)
    assert_same(expected, got)
    rows_after = csv_rows(killed)
    assert {row["step"] for row in rows_after if row.get("train/loss")} == {str(s) for s in range(13)}
    kept = [row for row in rows_before if int(row["step"]) < killed_at]
    assert kept and all(row in rows_after for row in kept), "rows logged before the kill are kept"
    assert not list(killed.rglob("*.pending")) and not list(killed.rglob("*-v1.ckpt"))
