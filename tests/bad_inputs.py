"""Shared harness of the bad-input suite: run the real CLI, demand one error line, and prove that nothing
which existed before the command was changed (every file hashed before and after)."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossearth_gate.cli import main
from crossearth_gate.model.artefacts import save_trainable, spec_of
from crossearth_gate.model.backbone import build_backbone
from crossearth_gate.model.segmentor import Segmentor
from crossearth_gate.toolbox.slots import ToolboxConfig
from test_cli_e2e import TINY  # noqa: F401  (re-exported: the suite's tiny ViT on one demo tile)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src/crossearth_gate/demo_data/dubai"
ERROR = "crossearth-gate: error: "


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (relative path → digest)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_unchanged(before: dict[str, str], root: Path) -> None:
    """Every file that existed before is still there, byte for byte (new files are checked by the caller)."""
    after = snapshot(root)
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert not changed, f"files changed or removed: {changed}"


def error_line(stderr: str, *needles: str) -> str:
    """stderr is exactly one line, the CLI's error, naming every needle; no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(ERROR), f"expected one error line, got:\n{stderr}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def cli(capsys: pytest.CaptureFixture[str], root: Path, argv: list[str], code: int, *needles: str) -> str:
    """Run the CLI in-process; assert its exit code, one error line and that nothing under ``root`` changed."""
    capsys.readouterr()
    before = snapshot(root)
    assert main([str(a) for a in argv]) == code
    line = error_line(capsys.readouterr().err, *needles)
    assert_unchanged(before, root)
    return line


def fit_argv(out: Path, *overrides: str, config: str = "demo") -> list[str]:
    return ["fit", "--config", config, "--out", str(out), *TINY, *overrides]


def tiny_model(folder: Path, window: int = 32, active: list[str] | None = None) -> Path:
    """A run-like folder with timm's ``test_vit`` model (patch 16), built and saved in milliseconds."""
    torch.manual_seed(0)
    model = Segmentor(build_backbone("test_vit", "none", window), 3, ToolboxConfig(), "fpn", 16)
    model.toolbox.set_active(active or ["spatial.0", "semantic.2"])
    folder.mkdir(parents=True, exist_ok=True)
    spec = spec_of(model, ["a", "b", "c"], [[0, 0, 0], [255, 0, 0], [0, 255, 0]], 0, window, "fpn", 16)
    return save_trainable(folder / "trainable.safetensors", model, spec)


def rgb_png(path: Path, size: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _file_size_limit(limit: int) -> None:
    """In the child: a full disk after ``limit`` bytes per file (EFBIG instead of the killing SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def cli_subprocess(argv: list[str], cwd: Path, file_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a child process, optionally on a 'disk' that fills at ``file_limit``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "crossearth_gate.cli", *map(str, argv)], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=300, preexec_fn=None if file_limit is None else (lambda: _file_size_limit(file_limit)),
    )
