"""Bad-input suite, configs and overrides: every bad value is one line naming its key, exit 2, before the run
folder is even created."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from crossearth_gate.config.schema import load_config
from crossearth_gate.config.validation import check_runtime
from crossearth_gate.util.errors import UserError
from support.bad_inputs import cli, error_line
from support.cli import fit_argv, run_cli
from support.tiny import TINY

# (override, what the one line must name); each is refused before anything is written
BAD_OVERRIDES = [
    ("train.max_steps=0", "train.max_steps"),
    ("train.max_steps=-5", "train.max_steps"),
    ("train.lr=-0.1", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.val_every=0", "train.val_every"),
    ("train.seed=-1", "train.seed"),
    ("train.precision=17-fancy", "precision"),
    ("train.accelerator=quantum", "accelerator"),
    ("train.accelerator=tpu", "accelerator"),
    ("train.devices=0", "devices"),
    ("train.devices=many", "devices"),
    ("train.strategy=telepathy", "strategy"),
    ("train.num_nodes=0", "train.num_nodes"),
    ("model.backbone_kwargs={no_such_arg: 1}", "model.backbone_kwargs"),
    ("model.backbone_kwargs={embed_dim: 30, num_heads: 4}", "model.backbone_kwargs"),
    ("model.backbone_kwargs={depth: 0}", "model.backbone_kwargs"),
    ("model.backbone_kwargs={patch_size: 0}", "model.backbone_kwargs"),
    ("model.backbone_kwargs=[1, 2]", "model.backbone_kwargs"),
    ("model.backbone=resnet18", "model.backbone"),
    ("model.backbone=vit_imaginary_patch3", "vit_imaginary_patch3"),
    ("model.head=unet", "model.head"),
    ("model.head_channels=0", "model.head_channels"),
    ("model.out_indices=[7]", "model.out_indices"),
    ("model.weights=/no/such/weights.safetensors", "model.weights"),
    ("data.crop_size=50", "data.crop_size"),
    ("data.crop_size=0", "data.crop_size"),
    ("eval.window=100", "eval.window"),
    ("eval.stride=500", "eval.stride"),
    ("eval.blend=sharp", "eval.blend"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("data.scale_range=[2, 1]", "data.scale_range"),
    ("data.scale_range=[1]", "data.scale_range"),
    ("data.source.dataset=imagenet", "imagenet"),
    ("data.source.root=/no/such/folder", "/no/such/folder"),
    ("data.source.tiles=[]", "tiles"),
    ("data.targets={far: {dataset: dubai, root: /no/such/target, tiles: [5]}}", "/no/such/target"),
    ("data.targets={far: {dataset: dubai, root: '{demo_data}/dubai', tiles: [99]}}", "tile_99"),
    ("data.val={dataset: dubai, root: /no/such/val}", "/no/such/val"),
    ("data.unlabelled_target={dataset: vaihingen, root: /no/such/unlabelled}", "/no/such/unlabelled"),
    ("gate.k=2.5", "gate.k"),
    ("gate.k=4.5", "gate.k"),
    ("gate.k=0", "gate.k"),
    ("gate.k=-1", "gate.k"),
    ("gate.k=100", "gate.k"),
    ("gate.selector=magic", "gate.selector"),
    ("gate.every=0", "gate.every"),
    ("gate.warmup=-1", "gate.warmup"),
    ("gate.num_samples=0", "gate.num_samples"),
    ("gate.fisher_method=fast", "gate.fisher_method"),
    ("gate.budget.step_fraction=2", "gate.budget.step_fraction"),
    ("gate.budget.lowest_block=9", "gate.budget.lowest_block"),
    ("toolbox.types=[colour]", "colour"),
    ("toolbox.frequency_cutoff=0", "toolbox.frequency_cutoff"),
    ("toolbox.lora_rank=0", "toolbox.lora_rank"),
    ("toolbox.up_init_std=-0.01", "toolbox.up_init_std"),
    ("train.adaptation=mixup", "train.adaptation"),
    ("gate.fisher_data=all", "gate.fisher_data"),
    ("gate.fisher_data=target", "gate.fisher_data"),
    ("adaptation.ema_alpha=1", "adaptation.ema_alpha"),
    ("adaptation.blur_p=1.5", "adaptation.blur_p"),
    ("adaptation.blur_sigma=[1, 0.5]", "adaptation.blur_sigma"),
    ("name=../elsewhere", "name"),
    ("train.lrr=1", "train.lrr"),
    ("train.max_steps=abc", "train.max_steps"),
    ("train.lr=[1,", "train.lr=[1,"),
    ("=5", "=5"),
    ("train..lr=1", "train..lr=1"),
    ("no_equals_sign", "no_equals_sign"),
]


@pytest.mark.parametrize(("override", "key"), BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override(override: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    cli(capsys, tmp_path, fit_argv(out, override), 2, key)
    assert not out.exists(), "refused before the run folder is made"


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


CONFIG_FILES = {
    "folder": (lambda d: d / "a_folder", "is a folder"),
    "not_utf8": (lambda d: _write(d / "latin1.yaml", "name: caf\xe9\n".encode("latin-1")), "UTF-8"),
    "self_cycle": (lambda d: _write(d / "self.yaml", "_base_: self.yaml\n"), "_base_ cycle"),
    "two_cycle": (lambda d: (_write(d / "b.yaml", "_base_: a.yaml\n"), _write(d / "a.yaml", "_base_: b.yaml\n"))[1],
                  "_base_ cycle"),
    "base_not_a_name": (lambda d: _write(d / "num.yaml", "_base_: 5\n"), "_base_"),
    "base_missing": (lambda d: _write(d / "orphan.yaml", "_base_: nowhere.yaml\n"), "nowhere.yaml"),
    "missing": (lambda d: d / "missing.yaml", "config file not found"),
    "invalid_yaml": (lambda d: _write(d / "bad.yaml", "train: [unclosed\n"), "invalid YAML"),
    "top_level_list": (lambda d: _write(d / "list.yaml", "- 1\n- 2\n"), "mapping"),
    "unknown_packaged_name": (lambda d: d / "no_such_config", "no_such_config"),
    "no_base_no_source": (lambda d: _write(d / "bare.yaml", "name: bare\ntrain: {max_steps: 2}\n"), "data.source"),
    "source_null": (lambda d: _write(d / "null.yaml", "_base_: demo\ndata: {source: null}\n"), "data.source.dataset"),
    "source_without_root": (lambda d: _write(d / "noroot.yaml", "data: {source: {dataset: dubai}}\n"),
                            "data.source.root"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FILES))
def test_bad_config_file(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_folder").mkdir()
    make, needle = CONFIG_FILES[case]
    path = make(tmp_path)
    out = tmp_path / "run"
    cli(capsys, tmp_path, fit_argv(out, config=path.name if case == "unknown_packaged_name" else str(path)), 2,
        needle)
    assert not out.exists()


def test_a_config_without_base_or_source_is_one_line_from_the_console_entry_point(tmp_path: Path) -> None:
    """Neither ``_base_`` nor ``data.source``: the real ``python -m crossearth_gate.cli`` exits 2 with one line."""
    _write(tmp_path / "bare.yaml", "name: bare\ntrain: {max_steps: 2}\n")
    done = run_cli("fit", "--config", "bare.yaml", "--out", "run", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    error_line(done.stderr, "data.source", "_base_")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.yaml"], "nothing written"


def test_a_fractional_count_in_a_config_file_is_refused(tmp_path: Path) -> None:
    """``k: 4.5`` is neither a count nor a fraction: refused where the file is read, never truncated to 4."""
    path = _write(tmp_path / "k.yaml", "_base_: demo\ngate:\n  k: 4.5\n")
    with pytest.raises(UserError, match="gate.k") as err:
        load_config(str(path))
    assert "\n" not in str(err.value)


def test_a_local_folder_never_shadows_a_packaged_config(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``crossearth-gate demo --out demo`` leaves a folder called demo: the next ``--config demo`` still works."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    cli(capsys, tmp_path, fit_argv(tmp_path / "run", "train.max_steps=0"), 2, "train.max_steps")
    cli(capsys, tmp_path, ["demo", "--out", "demo", "train.max_steps=0"], 2, "train.max_steps")


def test_crops_far_larger_than_the_images_warn_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """Legal but almost surely a slip: a 1400 px crop of 512 px demo images is mostly padding."""
    cfg = load_config("demo", [*TINY, "data.crop_size=1400"])
    with caplog.at_level(logging.WARNING):
        check_runtime(cfg)
    warnings = [r.getMessage() for r in caplog.records if "data.crop_size" in r.getMessage()]
    assert len(warnings) == 1 and "1400" in warnings[0] and "\n" not in warnings[0]
