"""A run folder is never damaged: refused and failed resumes leave it byte for byte; --no-resume moves it aside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from crossearth_gate.cli import main
from support.bad_inputs import snapshot
from support.tiny import TINY

STEPS = ["train.max_steps=2"]


def fit(out: Path, *extra: str, flags: tuple[str, ...] = ()) -> int:
    return main(["fit", *flags, "--config", "demo", "--out", str(out), *TINY, *STEPS, *extra])


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert fit(out) == 0
    return out


@pytest.mark.parametrize(("override", "key"), [
    ("gate.k=2", "gate.k"),
    ("gate.selector=random", "gate.selector"),
    ("toolbox.types=[spatial, semantic]", "toolbox.types"),
    ("model.backbone_kwargs={embed_dim: 64, depth: 4, num_heads: 2}", "model.backbone_kwargs.embed_dim"),
    ("train.lr=0.5", "train.lr"),
])
def test_resume_with_another_config_is_refused_and_changes_nothing(
        finished: Path, override: str, key: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(finished)
    assert fit(finished, override) == 2
    line = one_error(capsys)
    assert key in line and "--no-resume" in line
    assert snapshot(finished) == before


def test_truncated_last_checkpoint_is_refused_and_changes_nothing(
        finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = snapshot(run)
    assert fit(run, "train.max_steps=4") == 2
    assert "last.ckpt: unreadable checkpoint" in one_error(capsys)
    assert snapshot(run) == before


def test_no_resume_moves_the_old_run_aside_whole(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    assert fit(run, "gate.k=2", flags=("--no-resume",)) == 0  # a new run, with another config even
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and snapshot(moved[0]) == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert json.loads((run / "gates.json").read_text())["k"] == 2


def test_rerunning_a_finished_run_changes_nothing(finished: Path, caplog: pytest.LogCaptureFixture,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(finished)
    assert fit(finished) == 0
    assert "already finished at step 2; nothing to do" in caplog.text
    assert "tile_5" in capsys.readouterr().out  # the stored results are shown again
    assert snapshot(finished) == before
    assert len({mode.split()[0] for mode in before.values()}) == 1, "every artefact has the same file mode"


def test_a_run_killed_while_testing_is_tested(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "metrics.json").unlink()
    last = (run / "checkpoints" / "last.ckpt").read_bytes()
    assert fit(run) == 0
    assert json.loads((run / "metrics.json").read_text())["domains"] == json.loads(
        (finished / "metrics.json").read_text())["domains"]
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == last, "nothing trained"


def test_a_checkpoint_beyond_max_steps_is_refused(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(finished)
    assert fit(finished, "train.max_steps=1") == 2
    assert "beyond train.max_steps=1" in one_error(capsys)
    assert snapshot(finished) == before
    assert torch.load(finished / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2


def test_keys_added_to_the_package_after_a_run_started_count_only_when_not_default() -> None:
    from crossearth_gate.config.schema import config_to_dict, load_config
    from crossearth_gate.training.run_dir import config_changes

    cfg = load_config("demo", TINY)
    saved = config_to_dict(cfg)
    del saved["gate"]["fisher_method"], saved["adaptation"]  # written by an older version without these keys
    assert config_changes(saved, cfg) == []
    assert config_changes(saved, load_config("demo", [*TINY, "gate.fisher_method=vmap"])) == ["gate.fisher_method"]
    saved["train"]["lr"] = 0.5
    assert config_changes(saved, cfg) == ["train.lr"]
