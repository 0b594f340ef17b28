"""Config loading: inheritance, overrides, type checks and unknown keys."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path

import pytest

from crossearth_gate.adaptation.settings import AdaptationConfig
from crossearth_gate.config.schema import (
    DEMO_DATA,
    DataConfig,
    EvalConfig,
    GateConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    config_to_dict,
    load_config,
)
from crossearth_gate.gating.fisher import FisherMethod, check_method
from crossearth_gate.gating.selection import SelectorName, make_selector
from crossearth_gate.heads import HEADS, HeadName
from crossearth_gate.model.inference import BlendMode, blend_weights
from crossearth_gate.toolbox.names import SLOT_TYPES, SlotType
from crossearth_gate.toolbox.slots import Toolbox, ToolboxConfig
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


def test_exponent_notation_is_a_number_where_a_number_is_expected(tmp_path: Path) -> None:
    """PyYAML reads ``1e-3`` (no dot) as a string; the README's own example override must still work."""
    child = tmp_path / "child.yaml"
    child.write_text("_base_: demo\ntrain: {weight_decay: 5e-2}\n")
    cfg = load_config(str(child), ["train.lr=1e-3", "train.max_steps=1e2"])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.max_steps) == (0.001, 0.05, 100)
    assert type(cfg.train.max_steps) is int
    with pytest.raises(UserError, match="expected int"):
        load_config("demo", ["train.max_steps=1.5e0"])
    with pytest.raises(UserError, match="expected float"):
        load_config("demo", ["train.lr=1e-3x"])


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


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GateConfig(selector="magic"), "config gate.selector: must be one of ['fisher', 'gradnorm', 'random']"),
        (lambda: GateConfig(k=2.5), "config gate.k: must be an integer count"),
        (lambda: GateConfig(fisher_method="fast"), "config gate.fisher_method: must be one of ['loop', 'vmap']"),
        (lambda: ModelConfig(head="unet"), "config model.head: must be one of ['fpn', 'mask2former']"),
        (lambda: EvalConfig(blend="sharp"), "config eval.blend: must be one of ['gaussian', 'uniform']"),
        (lambda: TrainConfig(adaptation="mixup"), "config train.adaptation: must be one of ['none', 'dacs']"),
        (lambda: TrainConfig(seed=-1), "config train.seed: must be in [0, 4294967295]"),
        (lambda: DataConfig(val_fraction=1.0), "config data.val_fraction: must be in [0, 1)"),
        (lambda: ModelConfig(gsd=0.0), "config model.gsd: must be > 0 (metres per pixel)"),
        (lambda: ToolboxConfig(frequency_cutoff=0.0), "config toolbox.frequency_cutoff: must be in (0, 1]"),
        (lambda: AdaptationConfig(confidence=1.0), "config adaptation.confidence: must be in [0, 1)"),
        (lambda: RunConfig(name="a/b"), "config name: must be a plain folder name"),
        (lambda: RunConfig(gate=GateConfig(enabled=True), toolbox=ToolboxConfig(types=())), "config gate.enabled"),
        (lambda: RunConfig(gate=GateConfig(fisher_data="both")), "gate.fisher_data=both needs pseudo-labels"),
        (lambda: RunConfig(train=TrainConfig(adaptation="dacs")), "train.adaptation=dacs needs data.unlabelled_target"),
    ],
)
def test_a_section_checks_itself_wherever_it_is_built(build: Callable[[], object], message: str) -> None:
    """In code as from YAML: each section refuses its own bad values, RunConfig the cross-section ones."""
    with pytest.raises(UserError) as err:
        build()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_defaults_are_valid() -> None:
    assert RunConfig().gate.selector == "fisher"


def test_every_allowed_value_is_one_the_code_accepts() -> None:
    """One list per choice (the Literal): each of its values works where it is used."""
    for name in typing.get_args(SelectorName):
        make_selector(name, seed=0, method="loop")
    for method in typing.get_args(FisherMethod):
        check_method(method)
    for mode in typing.get_args(BlendMode):
        assert blend_weights(4, 4, mode).shape == (4, 4)
    assert typing.get_args(SlotType) == SLOT_TYPES == tuple(Toolbox(8, 1, ToolboxConfig()).slots)
    assert typing.get_args(HeadName) == tuple(HEADS)
