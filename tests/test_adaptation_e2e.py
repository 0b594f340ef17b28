"""DA end to end on a tiny ViT: target masks are never read, the teacher and the DA state are in the
checkpoint and come back, and a killed DA run continues exactly."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from crossearth_gate.adaptation.pseudo import PseudoLabels
from crossearth_gate.cli import main
from crossearth_gate.config.schema import DEMO_DATA, load_config
from crossearth_gate.data.catalog import get_dataset_info
from crossearth_gate.training.adaptation import (
    PSEUDO_CONFIDENCE_FIGURE,
    DACSTask,
    PseudoLabelledFisherData,
    build_task,
)
from crossearth_gate.training.gate_callback import GateCallback
from crossearth_gate.training.phases import PhaseClock
from crossearth_gate.training.run import build_datamodule
from support.cli import cli_env
from support.paths import BENCHMARKS
from support.runs import (
    RESUME_SETTINGS,
    assert_same,
    checkpoint_step,
    outcome,
    resume_fit,
    run_killed,
)
from support.tiny import TINY, tiny_run


def da_overrides(root: Path) -> list[str]:
    """Source tile 1, scored tile 5, unlabelled tiles 6 and 7 (from ``root``), on top of a demo run."""
    return [
        f"data.targets={{tile_5: {{dataset: dubai, root: '{root}', tiles: [5]}}}}",
        f"data.unlabelled_target={{dataset: dubai, root: '{root}', tiles: [6, 7]}}",
        "train.adaptation=dacs",
        "train.log_every=1",
    ]


def da_settings(root: Path) -> list[str]:
    return [*TINY, *da_overrides(root)]


@pytest.fixture(scope="module")
def maskless_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo tiles 1 and 5 as shipped; tile 6 without its masks folder, tile 7 with garbage masks."""
    root = tmp_path_factory.mktemp("dubai")
    for tile in (1, 5, 6, 7):
        shutil.copytree(DEMO_DATA / "dubai" / f"tile_{tile}", root / f"tile_{tile}")
    shutil.rmtree(root / "tile_6" / "masks")
    for mask in (root / "tile_7" / "masks").iterdir():
        mask.write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def da_run(maskless_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "da"
    assert main(["fit", "--config", "demo", "--out", str(out), *da_settings(maskless_root),
                 "train.max_steps=4"]) == 0
    return out


def test_unlabelled_target_without_or_with_corrupt_masks_trains(da_run: Path) -> None:
    gates = json.loads((da_run / "gates.json").read_text())
    assert [(s["step"], s["data"]) for s in gates["selections"]] == [(0, "target"), (2, "target")]
    metrics = json.loads((da_run / "metrics.json").read_text())
    assert metrics["run"]["adaptation"] == "dacs" and set(metrics["domains"]) == {"source_val", "tile_5"}
    assert (da_run / "pseudo_confidence.png").stat().st_size > 0
    header = (da_run / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"dacs/confidence", "dacs/confident_share", "train/loss_mixed", "train/loss_source"} <= set(header)


def test_checkpoint_holds_the_teacher_but_no_backbone(da_run: Path) -> None:
    ckpt = torch.load(da_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    teacher = {k: v for k, v in state.items() if k.startswith("teacher.")}
    assert teacher and not any(k.startswith(("model.backbone.", "teacher.backbone")) for k in state)
    assert int(teacher["teacher.updates"]) == ckpt["global_step"], "one EMA update per optimiser step"
    head = [k for k in teacher if k.startswith("teacher.head__")]
    assert head and any(not torch.equal(state[k], state["model." + k[8:].replace("__", ".")]) for k in head)
    (saved,) = ckpt["adaptation"]["ranks"]  # one process: one rank's target stream and ClassMix RNG
    assert set(saved) == {"stream", "mix_rng"}


def test_the_dacs_task_attaches_itself_to_a_plain_trainer(maskless_root: Path, tmp_path: Path) -> None:
    """No ``fit``: a bare Lightning trainer with the data module and a gate callback given no samples. The
    task finds its target stream and radiometry in the data module, the gate scores on its pseudo-labelled
    target images, and the task's own callback draws the confidence curve into the trainer's root, timed
    on the clock both were built with."""
    cfg = load_config("demo", [*da_settings(maskless_root), "train.max_steps=2", "gate.every=1"])
    info = get_dataset_info("dubai")
    clock = PhaseClock()
    task = build_task(cfg, list(info.classes), list(info.palette), ["tile_5"], clock=clock)
    assert isinstance(task, DACSTask) and task.clock is clock and task.stream is None
    datamodule = build_datamodule(cfg, task.model.backbone.info.mean, task.model.backbone.info.std)
    gate = GateCallback(cfg.gate, task, seed=cfg.train.seed, datamodule=datamodule, clock=clock)
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, accelerator="cpu", devices=1, callbacks=[gate],
                        logger=CSVLogger(str(tmp_path), name="logs", version=""), log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    trainer.fit(task, datamodule=datamodule)

    unlabelled = datamodule.unlabelled_dataloader().dataset
    assert task.stream is not None and task.stream.dataset is unlabelled
    assert (task.stream.epoch, task.stream.position) == (0, 2 * cfg.data.batch_size)  # two steps of a batch
    assert task.radiometry is datamodule.radiometry
    assert isinstance(gate.fisher_data, PseudoLabelledFisherData) and gate.fisher_data.unlabelled is unlabelled
    assert gate.scored_on == ["target", "target"]
    assert (tmp_path / PSEUDO_CONFIDENCE_FIGURE).stat().st_size > 0
    assert clock.seconds["artefacts"] > 0 and clock.seconds["gate"] > 0


class _Images(torch.utils.data.Dataset):
    """5 fixed random images plus a 'crop' draw from the global RNG, as the train transform draws."""

    def __init__(self) -> None:
        self.images = torch.randn(5, 3, 56, 56, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i] + torch.rand(())}


@pytest.fixture()
def make_task(maskless_root: Path) -> Callable[[], DACSTask]:
    """A fresh DACS task over the same 5 target images, as a restarted run builds it."""
    cfg = load_config("demo", da_settings(maskless_root))
    info = get_dataset_info("dubai")
    images = _Images()

    def task() -> DACSTask:
        t = DACSTask(cfg, list(info.classes), list(info.palette), ["tile_5"])
        t.attach(images)
        return t

    return task


def test_teacher_and_da_state_round_trip(make_task: Callable[[], DACSTask]) -> None:
    task = make_task
    first = task()
    first.start_streams(0, 1)
    first.stream.next_batch(3)
    torch.rand((), generator=first.mix_rng)
    with torch.no_grad():
        for t in first.teacher.tensors().values():
            t.add_(1.0)
    checkpoint = {"state_dict": first.state_dict()}
    first.on_save_checkpoint(checkpoint)
    second = task()
    second.on_load_checkpoint(checkpoint)
    second.load_state_dict(checkpoint["state_dict"])
    second.start_streams(0, 1)  # training starts: the saved streams come back
    for name, value in first.teacher.tensors().items():
        assert torch.equal(second.teacher.tensors()[name], value), name
    assert torch.equal(second.stream.next_batch(4), first.stream.next_batch(4))
    assert torch.equal(torch.rand(3, generator=second.mix_rng), torch.rand(3, generator=first.mix_rng))


def test_a_stream_saved_by_other_ranks_or_before_sharding_resumes(make_task: Callable[[], DACSTask],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint of 1 rank read by 2 keeps the stream's position (with a warning); an old single-stream
    checkpoint (no ``ranks``) is read as one rank's."""
    first = make_task()
    first.start_streams(0, 1)
    first.stream.next_batch(3)
    checkpoint = {"state_dict": first.state_dict()}
    first.on_save_checkpoint(checkpoint)
    (saved,) = checkpoint["adaptation"]["ranks"]

    wider = make_task()
    wider.on_load_checkpoint(checkpoint)
    wider.start_streams(1, 2)
    assert "holds target streams of 1 ranks, this run has 2" in caplog.text
    assert (wider.stream.epoch, wider.stream.position) == (first.stream.epoch, first.stream.position) == (0, 3)
    assert (wider.stream.rank, wider.stream.world_size) == (1, 2)

    old = make_task()
    old.on_load_checkpoint({**checkpoint, "adaptation": saved})  # the layout before DDP sharding
    old.start_streams(0, 1)
    assert torch.equal(old.stream.next_batch(4), first.stream.next_batch(4))
    assert torch.equal(torch.rand(3, generator=old.mix_rng), torch.rand(3, generator=first.mix_rng))


@pytest.mark.slow
def test_killed_da_run_resumes_exactly(maskless_root: Path, tmp_path: Path) -> None:
    extra = [*da_overrides(maskless_root), "gate.every=3"]
    reference = tmp_path / "uninterrupted"
    assert main(["fit", "--config", "demo", "--out", str(reference), *RESUME_SETTINGS, *extra]) == 0
    killed = tmp_path / "killed"
    run_killed(killed, extra, after_step=4)
    assert checkpoint_step(killed / "checkpoints" / "last.ckpt") is not None
    proc = resume_fit(killed, extra, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming" in proc.stderr
    assert_same(outcome(reference), outcome(killed))


def test_a_da_config_trains_with_its_own_mask2former_head(benchmark_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """P2V as shipped (DACS, Mask2Former shrunk): matched losses on source and mixed images, Fisher on target."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("CEG_DATA", str(benchmark_data))
    out = tmp_path / "run"
    assert main(["fit", "--config", str(BENCHMARKS / "p2v.yaml"), "--out", str(out),
                 *tiny_run("benchmark_mask2former"), "train.log_every=1"]) == 0
    gates = json.loads((out / "gates.json").read_text())
    assert [s["data"] for s in gates["selections"]] == ["target"]
    header = (out / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "dacs/confidence" in header and "train/loss_mixed" in header


@pytest.mark.slow
@pytest.mark.ddp
def test_killed_two_process_da_run_resumes_exactly(maskless_root: Path, tmp_path: Path) -> None:
    """Under DDP each rank draws its own target images and crops; every rank's stream comes back on resume."""
    ddp = ["train.strategy=ddp", "train.devices=2", "train.accelerator=cpu"]  # the Fisher gate on pseudo-labels
    extra = [*da_overrides(maskless_root), "gate.every=3", *ddp]
    env = cli_env()  # one thread per rank
    reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    first = resume_fit(reference, extra, env)
    assert first.returncode == 0, first.stderr[-2000:]
    run_killed(killed, extra, after_step=4, env=env)
    resumed = resume_fit(killed, extra, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    assert_same(outcome(reference), outcome(killed))
    last = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    streams = [rank["stream"] for rank in last["adaptation"]["ranks"]]
    assert len(streams) == 2 and not torch.equal(streams[0]["rng_state"], streams[1]["rng_state"])
    assert streams[0]["epoch"] == streams[1]["epoch"] and streams[0]["position"] == streams[1]["position"]


def test_the_mixed_term_weighs_pasted_source_pixels_1_and_target_pixels_by_confidence(
        make_task: Callable[[], DACSTask], monkeypatch: pytest.MonkeyPatch) -> None:
    """DACS's per-pixel weights through the real training step, against a pixel-by-pixel hand computation:
    an image whose teacher is sure of nothing (w = 0) still learns from the source pixels pasted onto it."""
    task = make_task()
    task.start_streams(0, 1)
    gen = torch.Generator().manual_seed(5)
    source, target = torch.randn(2, 3, 28, 28, generator=gen), torch.randn(2, 3, 28, 28, generator=gen)
    labels = torch.randint(0, 3, (2, 28, 28), generator=gen)
    labels[0, :3] = 255
    pseudo = torch.randint(0, 3, (2, 28, 28), generator=gen)
    pseudo[1, :, :2] = 255  # no data
    pasted = torch.rand(2, 28, 28, generator=gen) < 0.4
    pasted &= labels != 255
    confident = torch.tensor([0.5, 0.0])
    monkeypatch.setattr(task.stream, "next_batch", lambda n: target)
    monkeypatch.setattr(task, "_pseudo", lambda images: PseudoLabels(pseudo, torch.ones(2, 28, 28), pseudo != 255,
                                                                      confident))
    monkeypatch.setattr("crossearth_gate.training.adaptation.classmix_masks", lambda labels, rng: pasted)
    monkeypatch.setattr("crossearth_gate.training.adaptation.strong_augment", lambda images, *args: images)
    logged: dict[str, float] = {}
    monkeypatch.setattr(task, "log", lambda name, value, **kwargs: logged.__setitem__(name, float(value)))
    task.training_step({"image": source, "mask": labels}, 0)

    mixed = torch.where(pasted[:, None], source, target)
    with torch.no_grad():
        log_p = task.model(mixed).double().log_softmax(1)
    total, count = 0.0, 0
    for j in range(2):
        for y in range(28):
            for x in range(28):
                label = int(labels[j, y, x]) if pasted[j, y, x] else int(pseudo[j, y, x])
                if label == 255:
                    continue
                weight = 1.0 if pasted[j, y, x] else float(confident[j])
                total += weight * -float(log_p[j, label, y, x])
                count += 1
    assert logged["train/loss_mixed"] == pytest.approx(total / count, rel=1e-5)
