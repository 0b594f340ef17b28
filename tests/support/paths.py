"""Where the repository's files and the project's real data are, as the tests see them."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "src/crossearth_gate/demo_data/dubai"
BENCHMARKS = REPO / "configs" / "benchmarks"
TESTS_CONFIGS = REPO / "tests" / "configs"

SHARED_DATA = Path(os.environ.get("CEG_SHARED_DATA", REPO.parent / "shared" / "data"))
"""The project's read-only real data (../shared/data beside the repository), or $CEG_SHARED_DATA."""
