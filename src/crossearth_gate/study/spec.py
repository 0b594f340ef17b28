"""The study file: which configs run under which protocols with which seeds, and which claims to test.

A cell is one (protocol, config, seed); its ``fit`` overrides are, in order: the study's common
overrides, the protocol's, the config entry's, then ``train.seed``. Unknown keys are errors.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config.schema import resolve_config_path
from ..util.errors import UserError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOP_KEYS = ("name", "description", "reference", "seeds", "overrides", "protocols", "configs", "claims")
_PROTOCOL_KEYS = ("description", "overrides")
_CONFIG_KEYS = ("config", "overrides", "protocols", "seeds")
_CLAIM_REQUIRED = ("name", "better", "worse", "protocol")
_CLAIM_KEYS = (*_CLAIM_REQUIRED, "paper")
_PAPER_KEYS = ("difference", "where")


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class ConfigEntry:
    name: str
    config: str  # as ``fit --config`` takes it: a path (relative to the working directory) or a packaged name
    overrides: tuple[str, ...]
    seeds: dict[str, tuple[int, ...]]  # protocol → seeds; only the protocols this config runs under


@dataclass(frozen=True)
class PaperValue:
    """The difference the paper reports for the same comparison, in its own setting: shown beside ours, never tested."""

    difference: float
    where: str


@dataclass(frozen=True)
class Claim:
    """``better`` beats ``worse`` on the target-mean mIoU of ``protocol``, paired by seed."""

    name: str
    better: str
    worse: str
    protocol: str
    paper: PaperValue | None = None


@dataclass(frozen=True)
class Cell:
    protocol: str
    config: str
    seed: int
    config_path: str
    overrides: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.protocol}/{self.config}/seed{self.seed}"

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.protocol / self.config / f"seed{self.seed}"

    def fit_args(self, out: Path) -> list[str]:
        return ["fit", "--config", self.config_path, "--out", str(self.run_dir(out)), *self.overrides]

    def command(self, out: Path) -> str:
        """The shell command that reproduces this cell alone."""
        return shlex.join(["crossearth-gate", *self.fit_args(out)])


@dataclass(frozen=True)
class Study:
    path: Path
    name: str
    description: str
    reference: str
    overrides: tuple[str, ...]
    protocols: dict[str, Protocol]
    configs: dict[str, ConfigEntry]
    claims: tuple[Claim, ...]

    def cells(self) -> list[Cell]:
        """Every cell, first seeds first: a study cut short still covers every (protocol, config) once."""
        order = {p: i for i, p in enumerate(self.protocols)}
        ranked = []
        for c_index, entry in enumerate(self.configs.values()):
            for protocol, seeds in entry.seeds.items():
                overrides = (*self.overrides, *self.protocols[protocol].overrides, *entry.overrides)
                for s_index, seed in enumerate(seeds):
                    cell = Cell(protocol, entry.name, seed, entry.config, (*overrides, f"train.seed={seed}"))
                    ranked.append(((s_index, order[protocol], c_index), cell))
        return [cell for _, cell in sorted(ranked, key=lambda item: item[0])]


def _mapping(value: Any, where: str, known: tuple[str, ...] | None = None,
             required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping, got {value!r}")
    if known is not None:
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    missing = [key for key in required if key not in value]
    if missing:
        raise UserError(f"{where}: missing key {missing[0]!r}")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise UserError(f"{where}: {value!r} is not a valid name (letters, digits, '_', '.', '-')")
    return value


def _overrides(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise UserError(f"{where}: expected a list of key.sub=value strings, got {value!r}")
    return tuple(value)


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    """A count n (seeds 0..n-1) or an explicit list of distinct seeds."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return tuple(range(value))
    if (isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                  for s in value) and len(set(value)) == len(value)):
        return tuple(value)
    raise UserError(f"{where}: expected a count >= 1 or a list of distinct seeds >= 0, got {value!r}")


def _config_path(raw: Any, study_dir: Path, where: str) -> str:
    """Relative to the study file first (as ``_base_`` is), else a path or packaged config name."""
    if not isinstance(raw, str) or not raw:
        raise UserError(f"{where}: expected a config path or packaged name, got {raw!r}")
    local = study_dir / raw
    if local.is_file():
        return os.path.normpath(local)
    if resolve_config_path(raw).is_file():
        return raw
    raise UserError(f"{where}: config {raw!r} not found (neither beside the study file nor packaged)")


def _config_entry(name: str, raw: Any, default_seeds: tuple[int, ...], protocols: dict[str, Protocol],
                  study_dir: Path, where: str) -> ConfigEntry:
    data = _mapping(raw, where, _CONFIG_KEYS, required=("config",))
    runs_under = data.get("protocols", list(protocols))
    if not isinstance(runs_under, list) or not runs_under or not all(p in protocols for p in runs_under):
        raise UserError(f"{where}.protocols: expected a list of protocols from {', '.join(protocols)}")
    seeds_raw = data.get("seeds")
    if isinstance(seeds_raw, dict):  # per protocol; the study's default elsewhere
        per = _mapping(seeds_raw, f"{where}.seeds", tuple(runs_under))
        seeds = {p: _seeds(per[p], f"{where}.seeds.{p}") if p in per else default_seeds for p in runs_under}
    else:
        own = default_seeds if seeds_raw is None else _seeds(seeds_raw, f"{where}.seeds")
        seeds = {p: own for p in runs_under}
    return ConfigEntry(name, _config_path(data["config"], study_dir, f"{where}.config"),
                       _overrides(data.get("overrides"), f"{where}.overrides"), seeds)


def _paper(raw: Any, where: str) -> PaperValue:
    data = _mapping(raw, where, _PAPER_KEYS, required=_PAPER_KEYS)
    difference = data["difference"]
    if isinstance(difference, bool) or not isinstance(difference, (int, float)):
        raise UserError(f"{where}.difference: expected a number of mIoU points, got {difference!r}")
    if not isinstance(data["where"], str) or not data["where"].strip():
        raise UserError(f"{where}.where: expected the paper's setting as text, e.g. 'CASID mean, ablation'")
    return PaperValue(float(difference), data["where"].strip())


def _claim(raw: Any, configs: dict[str, ConfigEntry], where: str) -> Claim:
    data = _mapping(raw, where, _CLAIM_KEYS, required=_CLAIM_REQUIRED)
    paper = _paper(data["paper"], f"{where}.paper") if "paper" in data else None
    claim = Claim(str(data["name"]), str(data["better"]), str(data["worse"]), str(data["protocol"]), paper)
    for role in ("better", "worse"):
        entry = configs.get(getattr(claim, role))
        if entry is None:
            raise UserError(f"{where}.{role}: {getattr(claim, role)!r} is not a config of this study")
        if claim.protocol not in entry.seeds:
            raise UserError(f"{where}: config {entry.name!r} does not run under protocol {claim.protocol!r}")
    return claim


def parse_study(data: Any, path: Path) -> Study:
    """Validate a study mapping; ``path`` locates relative config paths and names errors."""
    where = str(path)
    data = _mapping(data, where, _TOP_KEYS, required=("name", "reference", "protocols", "configs"))
    protocols = {}
    for name, raw in _mapping(data["protocols"], f"{where}: protocols").items():
        p = _mapping(raw or {}, f"{where}: protocols.{name}", _PROTOCOL_KEYS)
        protocols[_name(name, f"{where}: protocols")] = Protocol(
            name, str(p.get("description", "")), _overrides(p.get("overrides"), f"{where}: protocols.{name}.overrides"))
    if not protocols:
        raise UserError(f"{where}: protocols: name at least one protocol")
    default_seeds = _seeds(data.get("seeds", 1), f"{where}: seeds")
    configs = {
        _name(name, f"{where}: configs"): _config_entry(name, raw, default_seeds, protocols, path.parent,
                                                        f"{where}: configs.{name}")
        for name, raw in _mapping(data["configs"], f"{where}: configs").items()
    }
    if data["reference"] not in configs:
        raise UserError(f"{where}: reference {data['reference']!r} is not a config of this study")
    claims_raw = data.get("claims") or []
    if not isinstance(claims_raw, list):
        raise UserError(f"{where}: claims: expected a list")
    claims = tuple(_claim(c, configs, f"{where}: claims[{i}]") for i, c in enumerate(claims_raw))
    return Study(path, str(data["name"]), str(data.get("description", "")), data["reference"],
                 _overrides(data.get("overrides"), f"{where}: overrides"), protocols, configs, claims)


def load_study(path: Path) -> Study:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"{path}: study file not found") from err
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from err
    return parse_study(data, Path(path))
