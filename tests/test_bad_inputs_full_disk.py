"""Bad-input suite, write failures: a disk that fills (RLIMIT_FSIZE in the child, SIGXFSZ ignored, so writes
fail with EFBIG) during predict (PNG and GeoTIFF), export and fit. Non-zero exit, one line, and the good
file an earlier command wrote is never replaced."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from crossearth_gate.cli import main
from support.bad_inputs import ERROR
from support.cli import run_cli
from support.models import saved_tiny_model
from support.rasters import rgb_png, write_raster
from support.tiny import TINY


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1 (a failed write, not bad input), and stderr holds exactly one error line and no traceback.

    Other lines may only be progress and warnings of normal operation (see ``_expected_noise``).
    """
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR)]
    others = [line for line in lines if not line.startswith(ERROR) and not _expected_noise(line)]
    assert len(errors) == 1 and not others, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _expected_noise(line: str) -> bool:
    """predict's progress bar, the loud warning that the test backbones are random, fit's resume notice."""
    return ("RANDOM weights" in line or line.startswith("WARNING: resuming")
            or line.rstrip().endswith(("windows", "0:00:00", "-:--:--")))


def no_temporary_files(folder: Path) -> None:
    assert not list(folder.rglob("*.tmp")), "a failed write leaves no temporary file behind"


@pytest.mark.parametrize("kind", [pytest.param("png", marks=pytest.mark.slow), "geotiff"])
def test_full_disk_during_predict_keeps_the_earlier_prediction(kind: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    saved_tiny_model(run)
    if kind == "png":
        source = rgb_png(tmp_path / "in" / "scene.png", 256)
        bands: list[str] = []
    else:
        (tmp_path / "in").mkdir()
        pixels = np.random.default_rng(0).integers(1, 4000, (1, 256, 256), dtype=np.uint16)
        source = write_raster(tmp_path / "in" / "scene.tif", pixels)
        bands = ["--bands", "1,1,1"]
    out = tmp_path / "out"
    argv = ["predict", str(source), "-m", str(run), "-o", str(out), *bands]
    assert main(argv) == 0
    earlier = out / f"scene_pred{source.suffix}"
    before = digest(earlier)
    result = run_cli(*argv, cwd=tmp_path, file_limit=2048)
    one_error_line(result, "cannot write", str(earlier))
    assert digest(earlier) == before, "the good earlier prediction is kept"
    no_temporary_files(out)


def test_full_disk_during_export_keeps_the_earlier_export(tmp_path: Path) -> None:
    old, new = saved_tiny_model(tmp_path / "old", active=["frequency.1"]), saved_tiny_model(tmp_path / "new")
    out = tmp_path / "model.safetensors"
    assert main(["export", str(old), "--out", str(out)]) == 0
    before = {p.name: digest(p) for p in (out, out.with_suffix(".json"))}
    result = run_cli("export", new, "--out", out, cwd=tmp_path, file_limit=4096)
    one_error_line(result, "cannot write", str(out))
    assert {p.name: digest(p) for p in (out, out.with_suffix(".json"))} == before
    no_temporary_files(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("gate", ["true", "false"])  # without the gate, torch.save meets the full disk first
def test_full_disk_during_fit_keeps_the_earlier_checkpoint(gate: str, tmp_path: Path) -> None:
    """A finished 2-step run continued to 4 steps on a full disk: its checkpoint and weights stay as they were."""
    run = tmp_path / "run"
    argv = ["fit", "--config", "demo", "--out", str(run), *TINY, f"gate.enabled={gate}"]
    assert main([*argv, "train.max_steps=2"]) == 0
    kept = [run / "checkpoints" / "last.ckpt", run / "trainable.safetensors", run / "metrics.json"]
    before = [digest(p) for p in kept]
    result = run_cli(*argv, "train.max_steps=4", cwd=tmp_path, file_limit=64 * 1024)
    one_error_line(result, "cannot write")
    assert [digest(p) for p in kept] == before
    no_temporary_files(run)


def folder_digests(run: Path) -> dict[str, str]:
    """sha256 of every file in the folder (hidden ones included), by relative path."""
    return {str(p.relative_to(run)): digest(p) for p in sorted(run.rglob("*")) if p.is_file()}


def outcome(run: Path) -> dict[str, object]:
    """What a finished run reports: metrics (timings aside), gate history and map, log, config, weights."""
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["timing"], metrics["phases"]  # wall-clock figures differ by nature
    weights = load_file(str(run / "trainable.safetensors"))
    return {
        "metrics": metrics,
        "weights": {name: hashlib.sha256(t.numpy().tobytes()).hexdigest() for name, t in weights.items()},
        **{name: digest(run / name) for name in ("gates.json", "gate_map.png", "logs/metrics.csv", "config.yaml")},
    }


@pytest.mark.slow
def test_a_continuation_that_fails_half_way_leaves_the_run_as_it_was(tmp_path: Path) -> None:
    """A finished 2-step run continued to 6 steps on a full disk: every file of the folder is as it was (config,
    gate history and map, log, checkpoints, metrics, weights); the same command with room then ends exactly as
    the continuation that never failed."""
    run = tmp_path / "run"
    argv = ["fit", "--config", "demo", "--out", str(run), *TINY, "train.log_every=1"]
    assert run_cli(*argv, "train.max_steps=2", cwd=tmp_path).returncode == 0
    saved = tmp_path / "saved"
    shutil.copytree(run, saved)
    assert run_cli(*argv, "train.max_steps=6", cwd=tmp_path).returncode == 0
    uninterrupted = outcome(run)
    shutil.rmtree(run)
    shutil.copytree(saved, run)

    before = folder_digests(run)
    one_error_line(run_cli(*argv, "train.max_steps=6", cwd=tmp_path, file_limit=64 * 1024), "cannot write")
    assert folder_digests(run) == before
    no_temporary_files(run)
    again = run_cli(*argv, "train.max_steps=6", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert outcome(run) == uninterrupted
