"""Config loading: inheritance, overrides, type checks and unknown keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossearth_gate.config.schema import DEMO_DATA, RunConfig, config_to_dict, load_config
from crossearth_gate.util.errors import UserError
from support.paths import REPO


def test_base_inheritance_and_overrides(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text("_base_: demo\nname: child\ntrain: {lr: 0.001}\ntoolbox: {types: [semantic]}\n")
    cfg = load_config(str(child), ["train.max_steps=7", "gate.k=5", "data.batch_size=3"])
    assert isinstance(cfg, RunConfig)
    assert cfg.name == "child" and cfg.train.lr == 0.001 and cfg.train.max_steps == 7
    assert cfg.toolbox.types == ("semantic",)
    assert cfg.gate.k == 5 and cfg.gate.enabled, "untouched keys come from the base"
    assert cfg.data.batch_size == 3
    assert cfg.data.source.root == f"{DEMO_DATA}/dubai", "{demo_data} expands"
    assert set(cfg.data.targets) == {"tile_5", "tile_6", "tile_7", "tile_8"}


def test_round_trip_through_a_plain_dict() -> None:
    cfg = load_config("demo")
    tree = config_to_dict(cfg)
    assert tree["toolbox"]["types"] == ["spatial", "semantic", "frequency"]
    assert tree["data"]["targets"]["tile_5"]["tiles"] == [5]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown config key config.train.lrr"),
        ("bogus=1", "unknown config key config.bogus"),
        ("train.max_steps=abc", "config.train.max_steps: expected int"),
        ("train.max_steps=1.5", "config.train.max_steps: expected int"),
        ("gate.enabled=maybe", "config.gate.enabled: expected true/false"),
        ("toolbox.types=[spatial, colour]", "unknown module types ['colour']"),
        ("no_equals_sign", "bad override"),
    ],
)
def test_bad_configs_are_one_line_user_errors(override: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        load_config("demo", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(str(bad))


RUN_CONFIGS = [path for path in sorted(REPO.glob("configs/**/[!_]*.yaml"))
               if path.parent.name != "studies"]  # study files have their own schema (tests/test_study.py)


@pytest.mark.parametrize("path", RUN_CONFIGS)
def test_every_shipped_config_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEG_DATA", "/data")
    cfg = load_config(str(path))
    assert cfg.data.targets, f"{path.name} names no target domain"
    assert "$" not in cfg.data.source.root, "environment variables expand"
