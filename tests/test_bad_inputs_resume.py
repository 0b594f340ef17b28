"""Bad-input suite, existing runs and backbone weights: a resume that does not match the run folder, a damaged
checkpoint, unusable weights files and an unreachable hub. One line, exit 2, the run folder byte for byte."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crossearth_gate.cli import main
from support.bad_inputs import cli
from support.cli import fit_argv


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-step tiny run (Fisher gate, k=3), trained once for every case below."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(fit_argv(out, "train.max_steps=2")) == 0
    return out


@pytest.fixture()
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


RESUME_MISMATCHES = [
    ("gate.k=4", "gate.k"),
    ("gate.selector=random", "gate.selector"),
    ("toolbox.types=[spatial]", "toolbox.types"),
    ("model.head_channels=8", "model.head_channels"),
    ("train.lr=0.5", "train.lr"),
    ("train.seed=1", "train.seed"),
    ("gate.enabled=false", "gate.enabled"),
    ("train.max_steps=1", "train.max_steps=1"),  # the checkpoint is already past it
]


@pytest.mark.parametrize(("override", "key"), RESUME_MISMATCHES, ids=[o for o, _ in RESUME_MISMATCHES])
def test_resume_with_another_config_is_refused(override: str, key: str, run_copy: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, tmp_path, fit_argv(run_copy, override), 2, str(run_copy), key)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGED_RUNS = {
    "truncated_last_ckpt": (lambda r: _truncate(r / "checkpoints" / "last.ckpt"), "last.ckpt"),
    "garbage_last_ckpt": (lambda r: (r / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint"), "last.ckpt"),
    "config_yaml_missing": (lambda r: (r / "config.yaml").unlink(), "config.yaml"),
    "config_yaml_not_utf8": (lambda r: (r / "config.yaml").write_bytes(b"name: \xff\xfe\n"), "config.yaml"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_RUNS))
def test_damaged_run_folder_is_refused(case: str, run_copy: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    damage, needle = DAMAGED_RUNS[case]
    damage(run_copy)
    cli(capsys, tmp_path, fit_argv(run_copy), 2, needle)


def test_out_names_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").write_text("not a folder\n")
    cli(capsys, tmp_path, fit_argv(tmp_path / "run"), 2, "is a file")


# ------------------------------------------------------------------ backbone weights


def _garbage(d: Path) -> Path:
    (d / "weights.pth").write_bytes(b"\x80\x02 this is no checkpoint")
    return d / "weights.pth"


def _wrong_model(d: Path) -> Path:
    import torch

    torch.save({"some.other.model": torch.zeros(3)}, d / "other.pt")
    return d / "other.pt"


@pytest.mark.parametrize("make", [_garbage, _wrong_model], ids=["garbage", "another_model"])
def test_unusable_weights_file(make: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = make(tmp_path)  # type: ignore[operator]
    cli(capsys, tmp_path, fit_argv(tmp_path / "run", f"model.weights={weights}"), 2, weights.name)
    assert not (tmp_path / "run").exists(), "a run that never started leaves no folder"


@pytest.fixture()
def silent_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A 'hub' that accepts connections and never answers, like a proxy with no way out."""
    from huggingface_hub import constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield
    server.close()


def test_unreachable_hub_fails_fast_in_one_line(silent_hub: None, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    cli(capsys, tmp_path, fit_argv(tmp_path / "run", "model.weights=hub"), 2, "hub")
    assert not (tmp_path / "run").exists(), "a run that never started leaves no folder"
    assert time.monotonic() - started < 15, "one short probe, not minutes of retried downloads"


@pytest.mark.parametrize(("override", "needle"), [
    ("train.max_steps=0", "train.max_steps"), ("data.source.root=/no/such/folder", "/no/such/folder"),
    ("gate.k=2.5", "gate.k"),
])
def test_no_resume_with_bad_input_leaves_the_old_run_in_place(override: str, needle: str, run_copy: Path,
                                                              tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before ``--no-resume`` moves anything aside: the old run is where it was, byte for byte."""
    cli(capsys, tmp_path, ["fit", "--no-resume", *fit_argv(run_copy, override)[1:]], 2, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
