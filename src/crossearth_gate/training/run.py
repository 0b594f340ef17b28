"""One training run, config → artefacts: fit on the source, select on held-out source, test every domain."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from ..config.schema import RunConfig, config_to_dict
from ..data import SegDataModule
from ..data.catalog import PRESETS
from ..model.artefacts import TRAINABLE_FILE, save_trainable, spec_of
from ..model.backbone import BackboneInfo
from ..model.bands import band_state
from ..util.atomic import atomic_write_json, atomic_write_text
from . import run_dir as run_folder
from .adaptation import build_task
from .checkpoint_io import AtomicCheckpointIO
from .csv_log import RunCSVLogger
from .ddp import slot_aware_strategy
from .gate_callback import GateCallback
from .held_writes import HeldModelCheckpoint, HeldWrites
from .phases import PhaseClock, ValidationTimer
from .progress import StepProgressBar
from .resume import LastCheckpoint, RandomStates
from .task import SOURCE_VAL, SegmentationTask, input_kernels
from .timing import StepTimer


def build_datamodule(cfg: RunConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> SegDataModule:
    d = cfg.data
    return SegDataModule(
        source=d.source,
        targets=d.targets,
        val=d.val,
        val_fraction=d.val_fraction,
        unlabelled_target=d.unlabelled_target,
        crop_size=d.crop_size,
        scale_range=tuple(d.scale_range),
        batch_size=d.batch_size,
        num_workers=d.num_workers,
        mean=mean,
        std=std,
        seed=cfg.train.seed,
        cache=d.cache,
    )


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 2)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def _quiet_lightning() -> None:
    """Lightning sets its own INFO handler at import; keep its banners and tips out of the way."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def _trainer(cfg: RunConfig, run_dir: Path, callbacks: list[L.Callback], validate: bool,
             start: run_folder.Start, held: HeldWrites) -> L.Trainer:
    _quiet_lightning()
    t = cfg.train
    if t.progress:
        callbacks = [*callbacks, StepProgressBar()]
    loggers: list[Any] = [RunCSVLogger(run_dir, start.step, held)]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    except ImportError:
        pass
    return L.Trainer(
        max_steps=t.max_steps,
        val_check_interval=min(t.val_every, t.max_steps),
        limit_val_batches=None if validate else 0,
        check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=slot_aware_strategy(t.strategy),
        precision=t.precision,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
    )


def fit(cfg: RunConfig, run_dir: Path, resume: bool = True) -> dict[str, Any] | None:
    """Train, select the checkpoint on held-out SOURCE data, test every domain, write the artefacts.

    Returns the metrics on the global-zero process (None on the other DDP ranks).
    """
    run_dir = Path(run_dir)
    clock = PhaseClock()
    with clock.phase("set-up"):
        start = run_folder.prepare(cfg, run_dir, resume)  # before anything in run_dir is written
    if start.metrics is not None:
        return start.metrics
    with clock.phase("set-up"):
        trainer, task, datamodule, checkpoint, gate_cb, timer, held, validate, start = _set_up(
            cfg, run_dir, start, clock)
    ckpt_path = str(start.checkpoint) if start.checkpoint else None
    try:
        # inner: the phases callbacks time inside it (the gate's work, validation, figures written at its end)
        with clock.phase("training steps", inner=("gate", "validation", "artefacts")):
            trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    except BaseException:
        held.discard()  # a continuation that failed before its first checkpoint leaves the folder as it was
        raise

    # source-selected checkpoint when validating; otherwise the final weights, already in memory
    best = (checkpoint.best_model_path or None) if checkpoint is not None else None
    loaders = [datamodule.val_dataloader()] if validate else []
    loaders += datamodule.test_dataloader()
    with clock.phase("test", inner=("test samples",)):
        trainer.test(task, dataloaders=loaders, ckpt_path=best, verbose=False)
    if not trainer.is_global_zero:
        return None
    with clock.phase("artefacts"):
        if gate_cb is not None:
            gate_cb.write_artefacts()
    return write_run_artefacts(cfg, run_dir, task, gate_cb, best, trainer.world_size, timer, clock)


def _set_up(cfg: RunConfig, run_dir: Path, start: Any, clock: PhaseClock) -> tuple[Any, ...]:
    """Model (weights resolved), data, the run folder's first records, callbacks and the trainer."""
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    info = cfg.data.source.info
    validate = cfg.data.val is not None or cfg.data.val_fraction > 0
    domains = [SOURCE_VAL, *cfg.data.targets] if validate else list(cfg.data.targets)
    kernels = input_kernels(cfg)  # channels other than R, G, B grow the patch embedding (model/bands.py)
    # the DA task brings what it needs itself: its target stream and the gate's samples when training starts
    # (from the data module), its figure's callback (training/adaptation.py)
    task = build_task(cfg, list(info.classes), list(info.palette), domains, run_dir / "samples", kernels,
                      clock=clock)
    backbone = task.model.backbone.info
    datamodule = build_datamodule(cfg, backbone.mean, backbone.std)
    datamodule.setup("fit")  # bad data is refused here, before the run folder; its radiometry is recorded
    run_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed model or data set-up leaves no empty run
    held = HeldWrites(run_dir, held=start.checkpoint is not None and not start.finished)  # see held_writes.py
    atomic_write_text(held.path(run_dir / "config.yaml"), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    write_data_record(cfg, run_dir, datamodule)

    callbacks: list[L.Callback] = []
    checkpoint = None
    if validate:  # model selection on held-out SOURCE data, never on target labels
        checkpoint = HeldModelCheckpoint(
            held, dirpath=run_dir / "checkpoints", filename="best", monitor="val/mIoU", mode="max", save_top_k=1,
            save_last=False, auto_insert_metric_name=False, enable_version_counter=False,
        )
        callbacks.append(checkpoint)
    callbacks.append(LastCheckpoint(run_dir / run_folder.LAST, cfg.train.val_every, after_validation=validate,
                                    held=held))
    gate_cb = None
    if cfg.gate.enabled:
        gate_cb = GateCallback(cfg.gate, task, seed=cfg.train.seed, datamodule=datamodule, run_dir=run_dir,
                               held=held, clock=clock)
        callbacks.append(gate_cb)
    timer = StepTimer()  # after the gate callback: a selection at batch start is not part of the step
    callbacks.append(timer)
    callbacks.append(ValidationTimer(clock))
    callbacks.append(RandomStates())  # last: restores the random streams after every start-up draw
    trainer = _trainer(cfg, run_dir, callbacks, validate, start, held)
    return trainer, task, datamodule, checkpoint, gate_cb, timer, held, validate, start


def write_run_artefacts(cfg: RunConfig, run_dir: Path, task: SegmentationTask, gate_cb: GateCallback | None,
                        checkpoint: str | None, world_size: int, timer: StepTimer,
                        clock: PhaseClock | None = None) -> dict[str, Any]:
    model = task.model
    toolbox = model.toolbox
    per_slot = toolbox.slot_param_counts()
    head = sum(p.numel() for p in model.head.parameters())
    trained_slots = sorted(gate_cb.ever_active) if gate_cb else toolbox.active_slots()
    bands = sum(v.numel() for v in band_state(model.backbone.vit, "").values())  # new bands' kernels always train
    trainable = head + sum(per_slot[s] for s in trained_slots)
    if model.backbone.finetune:
        trainable += sum(p.numel() for p in model.backbone.parameters())
    else:
        trainable += bands
    total = sum(p.numel() for p in model.parameters())
    mode = run_mode(cfg)
    metrics = {
        "domains": {name: _round(result) for name, result in task.test_results.items()},
        "params": {
            "trainable": trainable,
            "total": total,
            "head": head,
            "bands": bands,
            "active_at_end": head + bands + sum(per_slot[s] for s in toolbox.active_slots()),
            "per_slot": per_slot,
        },
        "backbone": {"name": model.backbone.info.name, "weights": _weights_record(model.backbone.info)},
        "run": {
            "name": cfg.name,
            "mode": mode,
            "selector": cfg.gate.selector if cfg.gate.enabled else None,
            "adaptation": cfg.train.adaptation,
            "k": gate_cb.gate.k if gate_cb else None,
            "active": toolbox.active_slots(),
            "checkpoint": checkpoint,
            "world_size": world_size,
        },
        "timing": timer.summary(),
    }
    if clock is not None:
        metrics["phases"] = clock.summary()
    atomic_write_json(run_dir / "metrics.json", metrics)
    spec = spec_of(model, task.classes, task.palette, cfg.train.seed, cfg.data.crop_size, cfg.model.head,
                   cfg.model.head_channels, cfg.model.backbone_kwargs, _radiometry_record(run_dir))
    save_trainable(run_dir / TRAINABLE_FILE, model, spec, trained_slots)
    return metrics


DATA_FILE = "data.yaml"


def write_data_record(cfg: RunConfig, run_dir: Path, datamodule: SegDataModule) -> None:
    """The dataset definition of every domain as used (presets written out too) and the radiometry."""
    d = cfg.data
    domains = {"source": d.source, "val": d.val, "unlabelled_target": d.unlabelled_target,
               **{f"target {name}": spec for name, spec in d.targets.items()}}
    record: dict[str, Any] = {"radiometry": datamodule.radiometry.as_dict(), "domains": {}}
    for role, spec in domains.items():
        if spec is None:
            continue
        definition = PRESETS.get(spec.dataset) if isinstance(spec.dataset, str) else spec.dataset
        record["domains"][role] = {"preset": spec.dataset if isinstance(spec.dataset, str) else None,
                                   "root": spec.root, "definition": config_to_dict(definition)}
    atomic_write_text(run_dir / DATA_FILE, yaml.safe_dump(record, sort_keys=False))


def _radiometry_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's radiometry for the saved model; None (ImageNet 8-bit, as models before it) when that is it."""
    path = run_dir / DATA_FILE
    if not path.is_file():
        return None
    radiometry = yaml.safe_load(path.read_text(encoding="utf-8"))["radiometry"]
    plain = radiometry["mode"] == "imagenet" and radiometry["bands"] is None and radiometry["nodata"] is None
    return None if plain else radiometry


def _weights_record(info: BackboneInfo) -> dict[str, Any]:
    """Which source served the backbone weights, with the file's sha256."""
    if info.weights_record is None:
        return {"requested": info.weights, "source": None, "file": None, "sha256": None, "description": ""}
    return info.weights_record.as_dict()


def run_mode(cfg: RunConfig) -> str:
    """A short human name for what this run trains (the paper's baseline names)."""
    types = set(cfg.toolbox.types)
    if cfg.model.finetune_backbone:
        return "full-finetune"
    if not types:
        return "frozen"
    if cfg.gate.enabled:
        return f"gated-{cfg.gate.selector}" + ("-budget" if cfg.gate.budget.is_set else "")
    if types == {"spatial", "semantic", "frequency"}:
        return "all-on"
    names = {"spatial": "lora", "semantic": "adaptformer", "frequency": "earth-adapter"}
    return "+".join(names[t] for t in cfg.toolbox.types)
