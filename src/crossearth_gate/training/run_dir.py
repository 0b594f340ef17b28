"""May ``fit`` use this run folder? Decided before anything in it is written.

A folder holding a run is continued only with the same config, apart from the keys in ``RESUMABLE``
(they change how long or how the run is driven, not what it trains), and only from a readable
``last.ckpt``. Anything else is refused with one line and leaves the folder as it was. Starting over
(``--no-resume``) moves the old run aside as a whole instead of mixing old and new files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config.schema import RunConfig, config_to_dict
from ..util.errors import UserError

log = logging.getLogger(__name__)

RESUMABLE = ("train.max_steps", "train.progress", "data.num_workers", "data.cache")
"""Config keys a resumed run may change (with another ``train.max_steps`` the schedule differs from a
run trained to that length in one go)."""

RUN_FILES = ("config.yaml", "checkpoints", "logs", "metrics.json", "gates.json", "trainable.safetensors")
LAST = Path("checkpoints") / "last.ckpt"


@dataclass(frozen=True)
class Start:
    """Where ``fit`` starts: from scratch (``checkpoint`` None) or from ``last.ckpt`` at ``step``."""

    checkpoint: Path | None = None
    step: int = 0
    finished: bool = False  # trained to max_steps already: only the test runs (again)
    metrics: dict[str, Any] | None = None  # a finished run's metrics.json: nothing left to do


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_changes(saved: dict[str, Any], cfg: RunConfig) -> list[str]:
    """Keys (outside RESUMABLE) whose value differs between the saved config and ``cfg``.

    A key the saved config lacks was added to the package after that run started; the run was made
    with what is now its default, so only a value other than the default counts as a change.
    """
    new = _flatten(config_to_dict(cfg))
    given = _flatten(saved)
    defaults = _flatten(config_to_dict(RunConfig()))  # minus the None defaults the saved config fills in
    old = {**{k: v for k, v in defaults.items() if not any(g.startswith(f"{k}.") for g in given)}, **given}
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k, "<unset>") != new.get(k, "<unset>") and not k.startswith(RESUMABLE)]


def _read_checkpoint_step(path: Path) -> int:
    """The checkpoint's optimisation step; a truncated or foreign file is a clear refusal."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        return int(state["global_step"])
    except Exception as err:  # torch raises many types for a damaged file (EOFError, RuntimeError, pickle ...)
        raise UserError(f"{path}: unreadable checkpoint ({type(err).__name__}); use --no-resume to start over") from err


def _move_aside(run_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
        n += 1
    run_dir.rename(target)
    log.warning("--no-resume: moved the earlier run %s to %s", run_dir, target)
    return target


def prepare(cfg: RunConfig, run_dir: Path, resume: bool) -> Start:
    """Check (and with ``resume=False`` clear) ``run_dir`` for this config; writes nothing else.

    DDP ranks that Lightning starts later run this too; they join the run rank 0 prepared.
    """
    if os.environ.get("LOCAL_RANK", "0") != "0":
        resume = True
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a folder")
    if not any((run_dir / name).exists() for name in RUN_FILES):
        return Start()
    if not resume:
        _move_aside(run_dir)
        return Start()
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise UserError(f"{run_dir}: holds run files but no config.yaml; use another --out or --no-resume")
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{saved_path}: unreadable ({type(err).__name__}); use --no-resume to start over") from err
    changed = config_changes(saved if isinstance(saved, dict) else {}, cfg)
    if changed:
        shown = ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "")
        raise UserError(f"{run_dir}: was trained with another config ({shown} differ; only {', '.join(RESUMABLE)} "
                        "may change on resume); use another --out or --no-resume")
    last = run_dir / LAST
    if not last.is_file():
        return Start()  # killed before its first checkpoint: starts again from step 0
    step = _read_checkpoint_step(last)
    if step > cfg.train.max_steps:
        raise UserError(f"{last}: is at step {step}, beyond train.max_steps={cfg.train.max_steps}")
    if step < cfg.train.max_steps:
        log.warning("resuming %s from step %d", run_dir, step)
        return Start(last, step)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        log.warning("%s: already finished at step %d; nothing to do (--no-resume trains a new run)", run_dir, step)
        return Start(last, step, finished=True, metrics=json.loads(metrics_path.read_text(encoding="utf-8")))
    log.warning("%s: trained to step %d; testing it", run_dir, step)
    return Start(last, step, finished=True)
