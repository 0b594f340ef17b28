"""DACS pieces against independent computations: EMA by hand, ClassMix masks, confidence weights,
the gate's Fisher on pseudo-labels by brute force, the target stream's state, honest protocols."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossearth_gate.adaptation.classmix import classmix_masks, mix, mixed_weights
from crossearth_gate.adaptation.photometric import gaussian_blur, strong_augment
from crossearth_gate.adaptation.protocol import check_disjoint
from crossearth_gate.adaptation.pseudo import Weighted, has_data, pack_targets, pseudo_labels
from crossearth_gate.adaptation.settings import AdaptationConfig
from crossearth_gate.adaptation.teacher import EMATeacher
from crossearth_gate.config.schema import DEMO_DATA, GateConfig, load_config
from crossearth_gate.data.catalog import DomainSpec, Subset, list_pairs
from crossearth_gate.gating import slot_fisher
from crossearth_gate.heads.losses import image_weights, per_sample_cross_entropy
from crossearth_gate.model.segmentor import HeadOutputs, Segmentor
from crossearth_gate.toolbox.slots import ToolboxConfig
from crossearth_gate.training.adaptation import (
    DACSTask,
    PseudoLabelledFisherData,
    TargetStream,
    build_task,
    relative_weights,
)
from crossearth_gate.training.gate_callback import GateCallback
from crossearth_gate.training.task import SegmentationTask
from crossearth_gate.util.errors import UserError
from support.models import tiny_backbone
from support.paths import BENCHMARKS

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASSES = 3


def tiny_segmentor(seed: int = 0) -> Segmentor:
    torch.manual_seed(seed)
    model = Segmentor(tiny_backbone(), CLASSES, ToolboxConfig(), head_channels=8)
    with torch.no_grad():  # non-zero slots, so that every slot changes the output
        for p in model.toolbox.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def nudge(model: nn.Module, names: list[str], seed: int) -> dict[str, Tensor]:
    """Move the given parameters randomly (a stand-in for an optimiser step); return the new values."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            params[name].add_(torch.randn(params[name].shape, generator=gen))
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------- EMA teacher


def test_ema_update_matches_a_hand_computation() -> None:
    model = tiny_segmentor()
    teacher = EMATeacher(model, alpha=0.9)
    names = teacher.names
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert all(torch.equal(teacher.tensors()[n], theta0[n]) for n in names), "starts as a copy of the student"
    theta1 = nudge(model, names, 1)
    teacher.update(model)  # α_0 = min(1 - 1/1, 0.9) = 0: the teacher becomes the student
    theta2 = nudge(model, names, 2)
    teacher.update(model)  # α_1 = min(1 - 1/2, 0.9) = 0.5
    teacher.updates.fill_(50)
    theta3 = nudge(model, names, 3)
    teacher.update(model)  # α_50 = min(1 - 1/51, 0.9) = 0.9
    for n in names:
        expected = 0.9 * (0.5 * theta1[n] + 0.5 * theta2[n]) + 0.1 * theta3[n]
        torch.testing.assert_close(teacher.tensors()[n], expected, rtol=1e-6, atol=1e-6)
    assert int(teacher.updates) == 51


def test_inactive_slots_contribute_their_frozen_weights() -> None:
    model = tiny_segmentor()
    teacher = EMATeacher(model, alpha=0.99)
    model.toolbox.set_active(["spatial.0"])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("toolbox.slots.semantic")}
    assert frozen and all(n in teacher.names for n in frozen), "every slot is in the teacher, active or not"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    for step in range(5):
        nudge(model, trainable, step)
        teacher.update(model)
    for n, value in frozen.items():
        torch.testing.assert_close(teacher.tensors()[n], value)


def test_teacher_shares_the_backbone_and_copies_only_what_trains() -> None:
    model = tiny_segmentor()
    teacher = EMATeacher(model, alpha=0.99)
    assert not any(n.startswith("backbone.") for n in teacher.names)
    trainable = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    assert sum(t.numel() for t in teacher.tensors().values()) == trainable
    backbone_ptrs = {p.data_ptr() for p in model.backbone.parameters()}
    assert not backbone_ptrs & {t.data_ptr() for t in teacher.buffers()}, "no backbone tensor is copied"
    images = torch.randn(2, 3, 28, 28)
    model.train()
    with torch.no_grad():
        own = model.eval()(images)
    model.train()
    torch.testing.assert_close(teacher.predict(model, images), own)
    assert model.training, "the student's train/eval flags come back"
    with torch.no_grad():  # a change of the shared backbone changes the teacher: it runs on the same storage
        model.backbone.vit.blocks[0].mlp.fc1.weight.mul_(3.0)
    assert not torch.allclose(teacher.predict(model, images), own)
    assert not teacher.predict(model, images).requires_grad


def test_teacher_runs_with_its_own_weights_not_the_students() -> None:
    model = tiny_segmentor()
    teacher = EMATeacher(model, alpha=0.99)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    nudge(model, [n for n in teacher.names if n.startswith("head.")], 5)
    images = torch.randn(1, 3, 28, 28)
    original = tiny_segmentor().eval()
    with torch.no_grad():
        torch.testing.assert_close(teacher.predict(model, images), original(images))
    assert all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in nudge(model, [], 0).items())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


# ----------------------------------------------------------------------------- ClassMix and pseudo-labels


def test_classmix_pastes_exactly_half_the_present_source_classes() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([
        [[0, 1, 2, 3], [255, 1, 2, 3], [0, 0, 255, 4]],
        [[2, 2, 2, 2], [2, 255, 2, 2], [2, 2, 2, 2]],
    ])
    masks = classmix_masks(labels, gen)
    first = labels[0][masks[0]].unique().tolist()
    assert len(first) == 3 and set(first) <= {0, 1, 2, 3, 4}, "ceil(5 / 2) classes"
    assert torch.equal(masks[0], torch.isin(labels[0], torch.tensor(first))), "every pixel of a chosen class"
    assert torch.equal(masks[1], labels[1] == 2), "one class: ceil(1 / 2) = 1, all its pixels"
    assert not masks[labels == 255].any(), "ignored source pixels are never pasted"
    source, target = torch.randn(2, 3, 3, 4), torch.randn(2, 3, 3, 4)
    pseudo = torch.randint(0, 5, (2, 3, 4))
    pseudo[0, 2, 2] = 255  # a target pixel without data
    image, label = mix(masks, source, target), mix(masks, labels, pseudo)
    m = masks.unsqueeze(1).expand_as(source)
    assert torch.equal(image[m], source[m]) and torch.equal(image[~m], target[~m])
    assert torch.equal(label[masks], labels[masks]) and torch.equal(label[~masks], pseudo[~masks])
    assert label[0, 2, 2] == 255, "an ignored pixel stays ignored"


def test_classmix_is_reproducible_from_its_generator() -> None:
    labels = torch.randint(0, 6, (3, 8, 8))
    a = classmix_masks(labels, torch.Generator().manual_seed(4))
    b = classmix_masks(labels, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_confidence_weight_by_hand() -> None:
    # image 0: 4 pixels, softmax confidences 0.98, 0.98, 0.6, no data; image 1: all 0.6
    sure = torch.tensor([4.0, 0.0, 0.0])  # softmax max = e^4 / (e^4 + 2) = 0.9647
    very = torch.tensor([5.0, 0.0, 0.0])  # e^5 / (e^5 + 2) = 0.9867
    unsure = torch.tensor([0.0, 1.0, 0.0])  # e / (e + 2) = 0.576
    logits = torch.stack([
        torch.stack([very, very, unsure, sure]).T.reshape(3, 2, 2),
        torch.stack([unsure] * 4).T.reshape(3, 2, 2),
    ])
    valid = torch.tensor([[[True, True], [True, False]], [[True, True], [True, True]]])
    pseudo = pseudo_labels(logits.softmax(1), valid, threshold=0.968)
    torch.testing.assert_close(pseudo.weight, torch.tensor([2 / 3, 0.0]))
    assert pseudo.labels.tolist() == [[[0, 0], [1, 255]], [[1, 1], [1, 1]]]
    expected_confidence = (2 * 0.98670 + 0.57612 + 4 * 0.57612) / 7
    assert pseudo.mean_confidence == pytest.approx(expected_confidence, abs=1e-4)


def test_pure_black_target_pixels_have_no_data() -> None:
    rgb = torch.full((1, 3, 2, 2), 0.5)
    rgb[0, :, 0, 0] = 0.0  # padding
    rgb[0, 1, 1, 1] = 0.0  # one dark band only: still data
    images = (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert has_data(images, MEAN, STD).tolist() == [[[False, True], [True, True]]]


def test_weighted_loss_is_weight_times_the_base_loss() -> None:
    logits, labels = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    labels[1, 0] = 255
    weight = torch.tensor([0.25, 0.75])
    expected = torch.stack([
        w * F.cross_entropy(lg[None], lb[None], ignore_index=255)
        for w, lg, lb in zip(weight, logits, labels, strict=True)
    ])
    torch.testing.assert_close(Weighted(per_sample_cross_entropy)(logits, pack_targets(labels, weight)), expected)


def test_strong_augmentation_moves_no_pixel_and_is_seeded() -> None:
    cfg = AdaptationConfig(jitter_p=1.0, blur_p=1.0)
    images = torch.randn(2, 3, 20, 20)
    a = strong_augment(images, MEAN, STD, cfg, torch.Generator().manual_seed(1))
    b = strong_augment(images, MEAN, STD, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == images.shape and not torch.equal(a, images)
    flat = torch.ones(3, 9, 9)
    torch.testing.assert_close(gaussian_blur(flat, 1.0), flat), "a blur keeps a flat image flat"
    none = AdaptationConfig(jitter_p=0.0, blur_p=0.0)
    rgb = torch.rand(1, 3, 6, 6)
    normalised = (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(strong_augment(normalised, MEAN, STD, none, torch.Generator()), normalised)


# ----------------------------------------------------------------------------- the gate on pseudo-labels


def _fake_task(model: Segmentor, teacher: EMATeacher, threshold: float) -> types.SimpleNamespace:
    task = types.SimpleNamespace(model=model, teacher=teacher, stats=(MEAN, STD),
                                 cfg=types.SimpleNamespace(adaptation=AdaptationConfig(confidence=threshold)))
    task._pseudo = types.MethodType(DACSTask._pseudo, task)
    task.pseudo_label = types.MethodType(DACSTask.pseudo_label, task)
    return task


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i]}


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_fisher_on_pseudo_labels_equals_brute_force(method: str) -> None:
    model = tiny_segmentor()
    teacher = EMATeacher(model, alpha=0.99)
    with torch.no_grad():  # a teacher that differs from the student and is sure of some pixels
        for n, t in teacher.tensors().items():
            t.mul_(4.0 if n.startswith("head.") else 1.0)
    student_active = ["spatial.1", "semantic.0", "frequency.3"]
    model.toolbox.set_active(student_active)
    images = torch.randn(5, 3, 28, 28)
    images[2, :, :6] = ((0 - torch.tensor(MEAN)) / torch.tensor(STD)).view(3, 1, 1)  # black padding rows
    data = PseudoLabelledFisherData("target", _fake_task(model, teacher, 0.6), None, _Images(images))
    batches = list(data.batches(4, seed=3, device=torch.device("cpu")))
    drawn, packed = batches[0]
    model.toolbox.set_active(student_active)
    assert isinstance(data.model, HeadOutputs) and data.model.segmentor is model, "scored on its raw head outputs"
    stats = slot_fisher(model, model.toolbox, iter(batches), data.loss, 4, method=method)

    # brute force: the teacher labels with the student's active set, every slot scored, one image at a time
    assert model.toolbox.active_slots() == student_active, "scoring restores the active set"
    pseudo = pseudo_labels(teacher.predict(model, drawn).softmax(1), has_data(drawn, MEAN, STD), 0.6)
    assert torch.equal(packed[:, 0].long(), pseudo.labels)
    assert 0 < float(pseudo.weight.min()) < float(pseudo.weight.max()) <= 1, "weights must vary for the test to bite"
    weight = pseudo.weight / pseudo.weight.mean()  # relative to their mean (selection is scale-free per type)
    torch.testing.assert_close(packed[:, 1, 0, 0], weight)
    model.toolbox.set_active(model.toolbox.slot_names)
    model.eval()
    params = {n: model.toolbox.slot_parameters(n) for n in model.toolbox.slot_names}
    expected = dict.fromkeys(params, 0.0)
    for j in range(len(drawn)):
        logits = model(drawn[j : j + 1])
        loss = weight[j] * F.cross_entropy(logits, pseudo.labels[j : j + 1], ignore_index=255)
        for name, ps in params.items():
            grads = torch.autograd.grad(loss, ps, retain_graph=True, allow_unused=True)
            expected[name] += sum(float(g.double().pow(2).sum()) for g in grads if g is not None)
    for name in params:
        assert stats.raw[name] == pytest.approx(expected[name] / 4, rel=1e-5, abs=1e-12), name


def test_the_gate_callback_has_the_teacher_label_with_the_students_active_set() -> None:
    """Through the real callback: the pseudo-labels it scores come from the active set at the selection, not
    from the all-on set scoring switches to (the samples are drawn lazily, inside scoring)."""
    model = tiny_segmentor()
    teacher = EMATeacher(model, alpha=0.99)
    with torch.no_grad():
        for n, t in teacher.tensors().items():
            t.mul_(4.0 if n.startswith("head.") else 1.0)
    student_active = ["spatial.1", "semantic.0", "frequency.3"]
    images = torch.randn(4, 3, 28, 28)
    data = PseudoLabelledFisherData("target", _fake_task(model, teacher, 0.6), None, _Images(images))
    scored: list[Tensor] = []
    base = data.loss
    data.loss = lambda outputs, packed: scored.append(packed[:, 0].long()) or base(outputs, packed)
    task = types.SimpleNamespace(model=model)
    callback = GateCallback(GateConfig(k=3, every=1, num_samples=4), task, seed=0, fisher_data=data)
    model.toolbox.set_active(student_active)
    trainer = types.SimpleNamespace(global_step=0, global_rank=0, is_global_zero=True)
    module = types.SimpleNamespace(model=model, device=torch.device("cpu"), log=lambda *args, **kwargs: None)
    callback.on_train_batch_start(trainer, module, None, 0)  # type: ignore[arg-type]

    assert len(callback.gate.history) == 1 and scored, "a selection was due and scored the samples"
    drawn = torch.cat(scored)
    loader = torch.utils.data.DataLoader(_Images(images), batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    sample = next(iter(loader))["image"]  # the callback's seed for the first selection on rank 0
    labels = {}
    for name, active in (("student", student_active), ("all", model.toolbox.slot_names)):
        model.toolbox.set_active(active)
        labels[name] = teacher.predict(model, sample).argmax(1)
    assert not torch.equal(labels["student"], labels["all"]), "the active set must change the labels to bite"
    assert torch.equal(drawn, labels["student"])


@pytest.mark.parametrize("k", [4.5, 1.5])
def test_the_gate_callback_refuses_a_fractional_count(k: float) -> None:
    """A count is whole: 4.5 slots is refused in one line, not truncated to 4 (9.0 from YAML is the count 9)."""
    task = types.SimpleNamespace(model=tiny_segmentor())
    with pytest.raises(UserError, match="gate.k: must be"):
        GateCallback(GateConfig(k=k, num_samples=2), task, seed=0)
    assert GateCallback(GateConfig(k=9.0, num_samples=2), task, seed=0).gate.k == 9


def test_relative_weights() -> None:
    torch.testing.assert_close(relative_weights(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.0, 1.0, 2.0]))
    assert relative_weights(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0], "an unsure teacher still labels"


def test_fisher_data_both_scores_half_source_half_target() -> None:
    model = tiny_segmentor()
    teacher = EMATeacher(model, alpha=0.99)

    class Source:
        def fisher_dataloader(self, n: int, seed: int) -> list[dict[str, Tensor]]:
            return [{"image": torch.randn(n, 3, 28, 28), "mask": torch.randint(0, CLASSES, (n, 28, 28))}]

    targets = _Images(torch.randn(4, 3, 28, 28))
    data = PseudoLabelledFisherData("both", _fake_task(model, teacher, 0.9), Source(), targets)
    (xs, ys), (xt, yt) = data.batches(5, seed=0, device=torch.device("cpu"))
    assert (len(xs), len(xt)) == (3, 2)
    assert torch.all(ys[:, 1] == 1.0), "labelled source samples weigh 1"


def test_fisher_draws_leave_the_global_random_stream_alone() -> None:
    model = tiny_segmentor()
    data = PseudoLabelledFisherData("target", _fake_task(model, EMATeacher(model, 0.99), 0.9), None,
                                    _Images(torch.randn(4, 3, 28, 28)))
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    first = list(data.batches(2, seed=1, device=torch.device("cpu")))
    assert torch.equal(torch.rand(3), expected)
    second = list(data.batches(2, seed=1, device=torch.device("cpu")))
    assert torch.equal(first[0][0], second[0][0]), "same seed, same samples"


# ----------------------------------------------------------------------------- the target stream


class _Cropped(torch.utils.data.Dataset):
    """Image i is i + a 'crop' drawn from the global RNG, as the real train transform draws: its floor names it."""

    def __init__(self, size: int = 3):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": torch.full((1, 1, 1), float(i)) + torch.rand(())}


def test_target_stream_resumes_exactly_from_its_state() -> None:
    stream = TargetStream(_Cropped(), seed=0)
    stream.next_batch(2)
    state = stream.state_dict()
    expected = [stream.next_batch(2) for _ in range(3)]  # wraps into later passes
    resumed = TargetStream(_Cropped(), seed=0)
    torch.manual_seed(123)  # whatever the global stream does meanwhile
    resumed.load_state_dict(state)
    for batch in expected:
        assert torch.equal(resumed.next_batch(2), batch)
    assert stream.epoch >= 2


def test_ddp_ranks_share_each_pass_without_overlap() -> None:
    """Independent: the passes' permutations concatenated; rank r takes every world-th image of each stretch."""
    seed, n, steps = 3, 2, 5
    order = torch.cat([torch.randperm(5, generator=torch.Generator().manual_seed(seed + 7919 * e)) for e in range(5)])
    ranks = [TargetStream(_Cropped(5), seed) for _ in range(2)]
    for rank, stream in enumerate(ranks):
        stream.shard(rank, 2)
    single = TargetStream(_Cropped(5), seed)
    for step in range(steps):
        stretch = order[step * 2 * n:(step + 1) * 2 * n].tolist()
        images = [stream.next_batch(n).flatten() for stream in ranks]
        for rank in range(2):
            assert images[rank].floor().long().tolist() == stretch[rank::2]
        assert not torch.equal(images[0].frac(), images[1].frac()), "each rank crops with its own RNG"
        assert single.next_batch(n).flatten().floor().long().tolist() == order[step * n:(step + 1) * n].tolist()
    assert [(s.epoch, s.position) for s in ranks] == [(3, 5), (3, 5)]  # 20 draws over passes of 5: equal on ranks


# ----------------------------------------------------------------------------- configs and protocols


def _demo(tiles: list[int], **subset: object) -> DomainSpec:
    return DomainSpec("dubai", str(DEMO_DATA / "dubai"), tiles=tiles, subset=Subset(**subset) if subset else None)


def test_subset_splits_every_tile_into_disjoint_seeded_parts() -> None:
    for tile in (5, 6, 7, 8):
        everything = {p[0] for p in list_pairs(_demo([tile]))}
        part = {p[0] for p in list_pairs(_demo([tile], fraction=0.5, take="part"), labelled=False)}
        rest = {p[0] for p in list_pairs(_demo([tile], fraction=0.5, take="rest"))}
        assert part and rest and not part & rest and part | rest == everything
    both = {p[0] for p in list_pairs(_demo([5, 6], fraction=0.5, take="part"))}
    alone = {p[0] for p in list_pairs(_demo([5], fraction=0.5, take="part"))}
    assert alone <= both, "a tile's part does not depend on the other tiles listed"
    with pytest.raises(UserError, match="fraction"):
        list_pairs(_demo([5], fraction=1.5))


def test_scoring_unlabelled_training_images_is_refused_unless_transductive() -> None:
    with pytest.raises(UserError, match="transductive") as err:
        check_disjoint(_demo([5, 6]), {"tile_6": _demo([6], fraction=0.5, take="rest")}, transductive=False)
    assert "\n" not in str(err.value)
    check_disjoint(_demo([5, 6]), {"tile_6": _demo([6])}, transductive=True)
    check_disjoint(_demo([5], fraction=0.5, take="part"), {"tile_5": _demo([5], fraction=0.5, take="rest")}, False)


def test_dubai_protocols_score_the_same_images() -> None:
    da, dg = load_config("dubai_da"), load_config("dubai_dg")
    assert (da.train.adaptation, dg.train.adaptation) == ("dacs", "none")
    assert da.data.targets == dg.data.targets and dg.data.unlabelled_target is None
    assert da.gate.every == 50 and da.gate.fisher_data == "target"
    check_disjoint(da.data.unlabelled_target, da.data.targets, da.adaptation.transductive)


@pytest.mark.parametrize("overrides, message", [
    (["gate.fisher_data=target"], "needs pseudo-labels"),
    (["train.adaptation=dacs"], "unlabelled_target"),
    (["train.adaptation=mixup"], "train.adaptation: must be one of"),
    (["train.adaptation=dacs", "gate.fisher_data=all"], "gate.fisher_data: must be one of"),
])
def test_bad_adaptation_settings_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):  # refused where the config is built
        load_config("demo", ["model.weights=none", *overrides])


def test_without_adaptation_the_task_is_the_plain_one(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config("demo", ["model.weights=none"])
    built = []
    monkeypatch.setattr(SegmentationTask, "__init__", lambda self, *args, **kwargs: built.append(type(self)))
    build_task(cfg, ["a"], [(0, 0, 0)], [])
    assert built == [SegmentationTask]


def test_paper_da_benchmarks_adapt_on_target_train_and_score_target_val() -> None:
    root = BENCHMARKS
    for name in ("p2v", "v2p", "r2u", "u2r"):
        cfg = load_config(str(root / f"{name}.yaml"))
        assert cfg.train.adaptation == "dacs" and cfg.gate.every == 50, name
        unlabelled = cfg.data.unlabelled_target
        assert unlabelled is not None and unlabelled.split == "train", name
        (target,) = cfg.data.targets.values()
        assert (target.dataset, target.split) == (unlabelled.dataset, "val"), name
        val = cfg.data.val
        assert (val.dataset == cfg.data.source.dataset) if val else cfg.data.val_fraction > 0, "selection on source"


def test_a_da_config_resumes_into_its_own_folder() -> None:
    """Domains that default to None (unlabelled_target, val) are no change when the saved config has them."""
    from crossearth_gate.config.schema import config_to_dict
    from crossearth_gate.training.run_dir import config_changes

    val = "data.val={dataset: dubai, root: '{demo_data}/dubai', tiles: [4]}"
    cfg = load_config("dubai_da", [val])
    assert config_changes(config_to_dict(cfg), cfg) == []
    other = load_config("dubai_da", [val, "data.unlabelled_target.tiles=[5]"])
    assert config_changes(config_to_dict(cfg), other) == ["data.unlabelled_target.tiles"]


def test_a_per_image_loss_weighs_each_image_by_its_mean_pixel_weight() -> None:
    """Mask2Former's form of the DACS weights: the mean over the image's labelled pixels, by hand."""
    pasted = torch.tensor([[[True, False], [False, False]], [[False, False], [True, True]]])
    weight = mixed_weights(pasted, torch.tensor([0.25, 0.0]))
    assert weight.tolist() == [[[1.0, 0.25], [0.25, 0.25]], [[0.0, 0.0], [1.0, 1.0]]]
    target = torch.tensor([[[0, 1], [255, 2]], [[255, 255], [255, 255]]])
    torch.testing.assert_close(image_weights(weight, target), torch.tensor([(1 + 0.25 + 0.25) / 3, 0.0]))
