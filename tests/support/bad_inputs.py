"""The bad-input suite's checks: run the CLI, demand one error line, and prove that nothing which existed
before the command was changed (every file hashed, with its mode, before and after)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from crossearth_gate.cli import main

ERROR = "crossearth-gate: error: "


def snapshot(root: Path) -> dict[str, str]:
    """Mode and sha256 of every file below ``root``, by relative path."""
    return {str(p.relative_to(root)): f"{oct(p.stat().st_mode)} {hashlib.sha256(p.read_bytes()).hexdigest()}"
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
