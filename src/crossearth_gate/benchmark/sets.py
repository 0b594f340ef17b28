"""The gated sets a benchmark times, as a file: two runs given the same file time identical configurations.

The paper's Fisher selection picks among near-tied slots, and the compute-aware gate's cost model is
calibrated by timing on the machine, so two runs that select their own sets time different ones and
their ratios differ for that reason alone. ``--select-only --out SETS.json`` writes the sets a run would
time; ``--sets FILE`` times the sets of FILE (a sets file, or any earlier benchmark JSON, which carries
its sets under ``"sets"``) and the JSON records which sets were timed and where they came from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..toolbox.slots import parse_slot
from ..util.errors import UserError

FORMAT = "crossearth-gate benchmark sets"
KEYS = ("gated", "compute_aware")


def sets_record(gated: list[str], aware: list[str], setup: dict[str, Any]) -> dict[str, Any]:
    """What a sets file holds: both sets and the set-up they were selected under."""
    keep = ("weights", "backbone", "img_size", "batch_size", "select_after", "num_samples", "step_fraction")
    return {"format": FORMAT, "gated": list(gated), "compute_aware": list(aware),
            "selected_with": {key: setup[key] for key in keep}}


def read_sets(path: Path) -> dict[str, Any]:
    """The sets of a sets file or of a benchmark JSON; anything else is one line (exit 2)."""
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except OSError as err:
        raise UserError(f"--sets {path}: cannot read it ({err.strerror or err})") from None
    except ValueError as err:
        raise UserError(f"--sets {path}: not JSON ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("sets"), dict):
        data = data["sets"]  # an earlier benchmark JSON
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"--sets {path}: neither a sets file (--select-only) nor a benchmark JSON with its sets")
    for key in KEYS:
        _check_set(path, key, data.get(key))
    selected_with = data.get("selected_with")
    if not isinstance(selected_with, dict) or not isinstance(selected_with.get("backbone"), str):
        raise UserError(f"--sets {path}: 'selected_with' must record the backbone the sets were selected for")
    return {"format": FORMAT, "gated": list(data["gated"]), "compute_aware": list(data["compute_aware"]),
            "selected_with": selected_with, "file": str(path), "sha256": hashlib.sha256(raw).hexdigest()}


def _check_set(path: Path, key: str, value: Any) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(n, str) for n in value):
        raise UserError(f"--sets {path}: '{key}' must be a non-empty list of slot names")
    if len(set(value)) != len(value):
        raise UserError(f"--sets {path}: '{key}' names a slot twice")
    for name in value:
        try:
            parse_slot(name)
        except (ValueError, UserError):
            raise UserError(f"--sets {path}: '{key}' holds {name!r}, not a slot name like 'spatial.3'") from None


def check_against(sets: dict[str, Any], backbone: str, slot_names: list[str]) -> None:
    """The sets must be this model's: same backbone, every slot one it has (before anything is timed)."""
    where = f"--sets {sets['file']}"
    if sets["selected_with"]["backbone"] != backbone:
        raise UserError(f"{where}: selected for backbone {sets['selected_with']['backbone']}, "
                        f"this run uses {backbone}")
    known = set(slot_names)
    for key in KEYS:
        unknown = [n for n in sets[key] if n not in known]
        if unknown:
            raise UserError(f"{where}: '{key}' names slots this model does not have: {', '.join(unknown)}")
