"""The CLI as the tests run it: in this process through ``main`` (fast; capsys and caplog see its output), or as
the real console entry point in a child process (exit code, stdout and stderr; DDP ranks; a full disk)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from crossearth_gate.cli import main
from support.paths import REPO
from support.tiny import TINY


def fit_argv(out: Path, *overrides: str, config: str = "demo") -> list[str]:
    """``fit`` of the demo run (tiny.yaml's ``runs.demo``) into ``out``, then ``overrides``."""
    return ["fit", "--config", config, "--out", str(out), *TINY, *overrides]


def fit_demo(out: Path, *overrides: str) -> int:
    """The demo run's fit in this process; its exit code."""
    return main(fit_argv(out, *overrides))


def cli_command(*argv: str | Path) -> list[str]:
    """The console entry point in a fresh interpreter: ``python -m crossearth_gate.cli ARGV``."""
    return [sys.executable, "-m", "crossearth_gate.cli", *map(str, argv)]


def cli_env(threads: int = 1) -> dict[str, str]:
    """This environment with the repository's package first on the path and ``threads`` OpenMP threads."""
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}


def _file_size_limit(limit: int) -> None:
    """In the child: a full disk after ``limit`` bytes per file (EFBIG instead of the killing SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def run_cli(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
            file_limit: int | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a child process (one thread unless ``env`` says otherwise), optionally on a 'disk' that
    fills at ``file_limit`` bytes; ``returncode``, ``stdout`` and ``stderr`` tell what it did."""
    return subprocess.run(
        cli_command(*argv), cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout,
        preexec_fn=None if file_limit is None else (lambda: _file_size_limit(file_limit)),
    )
