"""Metrics must match mmsegmentation's definitions and pool pixels over a whole domain."""

import math
from fractions import Fraction

import pytest
import torch

from crossearth_gate.training.metrics import SegMetrics, confusion_matrix, metrics_from_confusion
from crossearth_gate.util.errors import UserError

NAMES = ["road", "tree", "water", "car"]


def _pct(fraction: Fraction) -> float:
    return float(fraction * 100)


def test_hand_computed_confusion_and_scores() -> None:
    # Class "water" (2) never appears in ground truth but is predicted; "car" (3) is absent everywhere
    # except one ignored pixel where it is predicted, which must not count.
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 255, 255])
    pred = torch.tensor([0, 0, 1, 2, 1, 1, 1, 2, 0, 3, 0])
    confmat = confusion_matrix(pred, target, num_classes=4)
    expected = torch.tensor(
        [
            [2, 1, 1, 0],
            [1, 3, 1, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    assert torch.equal(confmat, expected)
    assert confmat.dtype == torch.int64

    scores = metrics_from_confusion(confmat, NAMES)
    # road: TP 2, FP 1, FN 2; tree: TP 3, FP 1, FN 2; water: TP 0, FP 2, FN 0.
    iou = {"road": Fraction(2, 5), "tree": Fraction(3, 6), "water": Fraction(0)}
    # F1 = 2PR / (P + R), mmseg's fscore: road P 2/3, R 2/4; tree P 3/4, R 3/5; water P 0/2, R 0/0 (NaN):
    # a class without a true positive has no F1 and drops out of mF1 (mmseg's nan-mean).
    f1 = {"road": Fraction(4, 7), "tree": Fraction(6, 9)}
    for name in iou:
        assert scores["per_class_iou"][name] == pytest.approx(_pct(iou[name]))
    for name in f1:
        assert scores["per_class_f1"][name] == pytest.approx(_pct(f1[name]))
    assert scores["per_class_iou"]["car"] is None
    assert scores["per_class_f1"]["car"] is None and scores["per_class_f1"]["water"] is None
    assert scores["mIoU"] == pytest.approx(_pct(sum(iou.values()) / 3))
    assert scores["mF1"] == pytest.approx(_pct((Fraction(4, 7) + Fraction(6, 9)) / 2))
    assert scores["OA"] == pytest.approx(_pct(Fraction(5, 9)))
    assert all(isinstance(scores[key], float) for key in ("mIoU", "mF1", "OA"))


def test_mf1_is_nan_when_no_class_has_a_true_positive() -> None:
    scores = metrics_from_confusion(torch.tensor([[0, 3], [2, 0]]), NAMES[:2])
    assert math.isnan(scores["mF1"]) and scores["mIoU"] == 0.0
    assert scores["per_class_f1"] == {"road": None, "tree": None}


def test_empty_matrix_raises() -> None:
    with pytest.raises(ValueError, match="no labelled pixels"):
        metrics_from_confusion(torch.zeros(4, 4, dtype=torch.long), NAMES)


def test_bad_labels_and_predictions() -> None:
    with pytest.raises(UserError, match="label value 7"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), num_classes=4)
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix(torch.tensor([0, 4]), torch.tensor([0, 1]), num_classes=4)
    with pytest.raises(UserError, match="class names"):
        SegMetrics(num_classes=3, class_names=NAMES)


def _brute_force(pairs: list[tuple[int, int]], num_classes: int, ignore: int = 255) -> dict:
    """Independent pixel-loop implementation of the mmsegmentation definitions."""
    tp, fp, fn = [0] * num_classes, [0] * num_classes, [0] * num_classes
    correct = total = 0
    for gt, pr in pairs:
        if gt == ignore:
            continue
        total += 1
        if gt == pr:
            tp[gt] += 1
            correct += 1
        else:
            fn[gt] += 1
            fp[pr] += 1
    ious, f1s = [], []
    for c in range(num_classes):
        if tp[c] + fp[c] + fn[c]:
            ious.append(100 * tp[c] / (tp[c] + fp[c] + fn[c]))
        precision = tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else math.nan
        recall = tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else math.nan
        if precision + recall > 0:  # False for NaN and for 0 + 0: mmseg's F-score is NaN there
            f1s.append(100 * 2 * precision * recall / (precision + recall))
    return {"mIoU": sum(ious) / len(ious), "mF1": sum(f1s) / len(f1s), "OA": 100 * correct / total}


def _random_batches(seed: int, num_classes: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for size in [(2, 5, 7), (1, 9, 4), (3, 6, 6)]:
        target = torch.randint(0, num_classes, size, generator=gen)
        target[torch.rand(size, generator=gen) < 0.15] = 255
        logits = torch.randn(size[0], num_classes, *size[1:], generator=gen)
        batches.append((logits, target))
    return batches


def test_segmetrics_accumulates_like_one_pixel_loop() -> None:
    metric = SegMetrics(num_classes=4, class_names=NAMES)
    pairs: list[tuple[int, int]] = []
    for step, (logits, target) in enumerate(_random_batches(seed=0, num_classes=4)):
        pred = logits.argmax(dim=1)
        metric.update(logits if step % 2 else pred, target)
        pairs += list(zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True))
    scores = metric.compute()
    expected = _brute_force(pairs, num_classes=4)
    for key in ("mIoU", "mF1", "OA"):
        assert scores[key] == pytest.approx(expected[key])


def test_segmetrics_pools_pixels_instead_of_averaging_images() -> None:
    images = [
        (torch.tensor([[[0, 0], [0, 0]]]), torch.tensor([[[0, 0], [0, 0]]])),  # perfect: mIoU 100
        (torch.tensor([[[1, 1], [1, 1]]]), torch.tensor([[[0, 1], [1, 1]]])),  # road 0, tree 3/4
    ]
    metric = SegMetrics(num_classes=2, class_names=["road", "tree"])
    per_image = []
    for pred, target in images:
        metric.update(pred, target)
        per_image.append(metrics_from_confusion(confusion_matrix(pred, target, 2), ["road", "tree"])["mIoU"])
    pooled = metric.compute()["mIoU"]
    # Pooled: road TP 4, FN 1 -> 4/5; tree TP 3, FP 1 -> 3/4.
    assert pooled == pytest.approx(_pct((Fraction(4, 5) + Fraction(3, 4)) / 2))
    assert sum(per_image) / 2 == pytest.approx(_pct((1 + Fraction(3, 8)) / 2))
    assert pooled != pytest.approx(sum(per_image) / 2)


def test_segmetrics_state_sums_across_processes() -> None:
    batches = _random_batches(seed=1, num_classes=4)
    whole, left, right = (SegMetrics(num_classes=4, class_names=NAMES) for _ in range(3))
    for i, (logits, target) in enumerate(batches):
        whole.update(logits, target)
        (left if i % 2 else right).update(logits, target)
    left.merge_state(right)
    assert torch.equal(left.confmat, whole.confmat)
    assert left.compute() == whole.compute()
