"""scripts/pseudo_label_threshold.py: the per-τ share and accuracy against a brute-force pixel loop, and the rule."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pseudo_label_threshold.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("pseudo_label_threshold", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def brute_force(probabilities, labels, data, taus):
    """Pixel by pixel in plain Python: shares over pixels with data, accuracies over the labelled ones."""
    b, c, h, w = probabilities.shape
    pixels = labelled = correct = 0
    total = 0.0
    above = [0] * len(taus)
    labelled_above = [0] * len(taus)
    correct_above = [0] * len(taus)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                if not data[i, y, x]:
                    continue
                scores = [float(probabilities[i, k, y, x]) for k in range(c)]
                confidence = max(scores)
                guess = scores.index(confidence)
                label = int(labels[i, y, x])
                pixels += 1
                total += confidence
                has_label = label != 255
                labelled += has_label
                correct += has_label and guess == label
                for t, tau in enumerate(taus):
                    if confidence > tau:
                        above[t] += 1
                        labelled_above[t] += has_label
                        correct_above[t] += has_label and guess == label
    rows = [(tau, above[t] / pixels, correct_above[t] / labelled_above[t] if labelled_above[t] else math.nan)
            for t, tau in enumerate(taus)]
    return pixels, labelled, total / pixels, correct / labelled, rows


def test_tally_matches_a_pixel_loop(script):
    generator = torch.Generator().manual_seed(3)
    probabilities = torch.softmax(3 * torch.randn(2, 4, 6, 7, generator=generator), dim=1)
    probabilities[0, :, 0, 0] = torch.tensor([0.7, 0.1, 0.1, 0.1])  # exactly at a τ: strict > leaves it out
    labels = torch.randint(0, 4, (2, 6, 7), generator=generator)
    labels[0, :2] = 255  # ignored labels: in shares, not in accuracies
    labels[1, 3, 4] = 255
    data = torch.ones(2, 6, 7, dtype=torch.bool)
    data[1, :, :3] = False  # no-data pixels: nowhere
    data[0, 5, 6] = False
    taus = (0.3, 0.5, 0.7, 0.9, 0.99)
    tally = script.Tally(taus)
    tally.add(probabilities[:1], labels[:1], data[:1])  # crop by crop adds up to the whole
    tally.add(probabilities[1:], labels[1:], data[1:])
    result = script.table(tally)
    pixels, labelled, mean_confidence, accuracy, rows = brute_force(probabilities, labels, data, taus)
    assert (result["pixels"], result["labelled_pixels"]) == (pixels, labelled) == (84 - 18 - 1, 84 - 18 - 1 - 14 - 1)
    assert result["mean_confidence"] == pytest.approx(mean_confidence)
    assert result["accuracy"] == pytest.approx(accuracy)
    for row, (tau, share, acc) in zip(result["rows"], rows, strict=True):
        assert row["tau"] == tau
        assert row["share"] == pytest.approx(share)
        assert row["accuracy"] == pytest.approx(acc, nan_ok=True)
    assert rows[0][1] > rows[-1][1] > 0  # the case is not trivial: shares differ across τ


def test_rule_picks_the_smallest_tau_reaching_the_accuracy(script):
    rows = [{"tau": 0.5, "share": 0.9, "accuracy": 0.80}, {"tau": 0.7, "share": 0.7, "accuracy": 0.89999},
            {"tau": 0.8, "share": 0.5, "accuracy": 0.90}, {"tau": 0.9, "share": 0.3, "accuracy": 0.88},
            {"tau": 0.95, "share": 0.0, "accuracy": math.nan}]
    assert script.smallest_tau(rows) == 0.8
    assert script.smallest_tau(list(reversed(rows))) == 0.8  # by τ, not by position
    assert script.smallest_tau(rows, required=0.95) is None  # NaN (no pixel above) never qualifies
    assert script.smallest_tau(rows, required=0.5) == 0.5


def test_tiles_are_the_whole_non_overlapping_ones(script):
    image = torch.arange(3 * 5 * 7).reshape(3, 5, 7)
    mask = torch.arange(5 * 7).reshape(5, 7)
    got = list(script.tiles(image, mask, 2))
    assert len(got) == 2 * 3  # a strip narrower than a tile is left out
    assert torch.equal(got[4][0], image[:, 2:4, 2:4]) and torch.equal(got[4][1], mask[2:4, 2:4])


def test_bad_run_dir_is_one_line_and_exit_2(tmp_path):
    import subprocess

    out = tmp_path / "o.json"
    for args in ([str(tmp_path / "nope")], [str(tmp_path)]):
        done = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], capture_output=True,
                              text=True)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "pseudo_label_threshold: error:" in done.stderr
    (tmp_path / "config.yaml").write_text("name: x\n")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--out", str(out)], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "no such checkpoint" in done.stderr
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("not a checkpoint")
    (tmp_path / "config.yaml").write_text("_base_: demo\n")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--out", str(out)], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "not a readable checkpoint" in done.stderr, done.stderr
    assert not out.exists()
