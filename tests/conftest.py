"""Fixtures every test module may ask for. Helpers to import live in tests/support/, the tiny settings in
tests/configs/tiny.yaml (see docs/testing.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support import threads
from support.benchmark_tree import write_benchmark_tree


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread for the test (tiny steps on a shared 2-core machine)."""
    with threads.one_thread():
        yield


@pytest.fixture(scope="session")
def benchmark_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every dataset the configs under configs/benchmarks read, in its release's folder layout, written once:
    point ``$CEG_DATA`` at it (read-only for tests)."""
    return write_benchmark_tree(tmp_path_factory.mktemp("ceg_data"))
