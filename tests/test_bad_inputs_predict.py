"""Bad-input suite, prediction and export: images, GeoTIFFs, band lists, model files and output paths.
One line naming the file or option, exit 2, and no file that existed before is changed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossearth_gate.cli import main
from support.bad_inputs import cli
from support.models import saved_tiny_model
from support.rasters import rgb_png, write_raster


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    """A run-like folder: trainable weights plus the files a finished run keeps beside them."""
    folder = tmp_path / "run"
    saved_tiny_model(folder)
    (folder / "metrics.json").write_text('{"domains": {}}\n')
    (folder / "config.yaml").write_text("name: tiny\n")
    return folder




def _truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _scene(d: Path) -> Path:
    return write_raster(d / "scene.tif", np.random.default_rng(0).integers(1, 4000, (1, 48, 48), dtype=np.uint16))


# name -> (make the input(s) in a folder, extra arguments, what the one line must name)
PREDICT_CASES = {
    "bands_two": (_scene, ["--bands", "1,2"], "--bands '1,2'"),
    "bands_beyond_count": (_scene, ["--bands", "5,5,5"], "band 5"),
    "bands_zero": (_scene, ["--bands", "0,1,1"], "--bands '0,1,1'"),
    "bands_not_numbers": (_scene, ["--bands", "r,g,b"], "--bands 'r,g,b'"),
    "one_band_without_bands": (_scene, [], "scene.tif"),
    "corrupt_geotiff": (lambda d: (d / "bad.tif").write_bytes(b"II*\x00 garbage") and d / "bad.tif", [], "bad.tif"),
    "truncated_geotiff": (lambda d: _truncated(write_raster(d / "cut.tif", np.ones((3, 256, 256), np.uint8))), [],
                          "cut.tif"),
    "unsupported_type": (lambda d: (d / "x.bmp").write_bytes(b"BM") and d / "x.bmp", [], "x.bmp"),
    "missing_input": (lambda d: d / "nowhere.png", [], "nowhere.png"),
    "grey_png": (lambda d: (Image.fromarray(np.zeros((40, 40), np.uint8)).save(d / "grey.png"), d / "grey.png")[1],
                 [], "grey.png"),
    "corrupt_png": (lambda d: (d / "junk.png").write_bytes(b"\x89PNG\r\n junk") and d / "junk.png", [], "junk.png"),
    "truncated_png": (lambda d: _truncated(rgb_png(d / "half.png", 128)), [], "half.png"),
    "empty_folder": (lambda d: (d / "empty").mkdir() or d / "empty", [], "empty"),
    "window_not_whole_patches": (lambda d: rgb_png(d / "a.png"), ["--window", "40"], "--window 40"),
    "overlap_one": (lambda d: rgb_png(d / "a.png"), ["--overlap", "1"], "--overlap"),
    "tile_zero": (lambda d: rgb_png(d / "a.png"), ["--tile", "0"], "--tile"),
    "batch_size_zero": (lambda d: rgb_png(d / "a.png"), ["--batch-size", "0"], "--batch-size"),
    "weights_file_missing": (lambda d: rgb_png(d / "a.png"), ["--weights", "/no/such/backbone.pth"],
                             "/no/such/backbone.pth"),
}


@pytest.mark.parametrize("case", sorted(PREDICT_CASES))
def test_bad_predict_input(case: str, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, extra, needle = PREDICT_CASES[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = make(inputs)
    out = tmp_path / "out"
    cli(capsys, tmp_path, ["predict", source, "-m", run, "-o", out, *extra], 2, needle)
    assert not out.exists() or not any(out.iterdir())


def test_two_inputs_with_one_output_name(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = rgb_png(tmp_path / "a" / "x.png"), rgb_png(tmp_path / "b" / "x.png")
    cli(capsys, tmp_path, ["predict", a, b, "-m", run, "-o", tmp_path / "out"], 2, "same output")


# model files: name -> (make the --model path from the run folder and tmp_path, what the line names)
MODEL_CASES = {
    "missing": (lambda r, d: d / "nowhere.safetensors", "nowhere.safetensors"),
    "not_safetensors": (lambda r, d: (d / "junk.safetensors").write_bytes(b"\x00" * 64) and d / "junk.safetensors",
                        "junk.safetensors"),
    "truncated": (lambda r, d: _truncated(r / "trainable.safetensors"), "trainable.safetensors"),
    "run_folder_without_weights": (lambda r, d: (r / "trainable.safetensors").unlink() or r, "trainable.safetensors"),
    "no_spec": (lambda r, d: _plain_safetensors(d / "plain.safetensors"), "plain.safetensors"),
}


def _plain_safetensors(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))
    return path


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
@pytest.mark.parametrize("command", ["predict", "export"])
def test_bad_model_file(command: str, case: str, run: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    make, needle = MODEL_CASES[case]
    model = make(run, tmp_path)
    image = rgb_png(tmp_path / "in" / "a.png")
    argv = (["predict", image, "-m", model, "-o", tmp_path / "out"] if command == "predict"
            else ["export", model, "--out", tmp_path / "exported.safetensors"])
    cli(capsys, tmp_path, argv, 2, needle)


def test_all_nodata_scene_warns_in_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    scene = write_raster(tmp_path / "void.tif", np.zeros((3, 40, 40), np.uint16), nodata=0)
    with caplog.at_level(logging.WARNING):
        assert main(["predict", str(scene), "-m", str(run), "-o", str(tmp_path / "out")]) == 0
    warnings = [r.getMessage() for r in caplog.records if "nodata" in r.getMessage()]
    assert len(warnings) == 1 and "void.tif" in warnings[0] and "\n" not in warnings[0]


# ------------------------------------------------------------------ output paths


def _under_a_file(d: Path) -> Path:
    (d / "afile").write_text("keep me\n")
    return d / "afile" / "sub"


def _unwritable(d: Path) -> Path:
    return Path("/proc/crossearth-gate-test/out")


OUT_PLACES = {"under_a_file": (_under_a_file, "afile"), "unwritable": (_unwritable, "/proc")}


def _argv(command: str, out: Path, run: Path, tmp_path: Path) -> list[object]:
    image = rgb_png(tmp_path / "in" / "a.png")
    return {
        "fit": ["fit", "--config", "demo", "--out", out],
        "demo": ["demo", "--out", out],
        "predict": ["predict", image, "-m", run, "-o", out],
        "report": ["report", run, "--out", out],
        "export": ["export", run, "--out", out / "m.safetensors"],
        "weights": ["weights", "convert", run / "trainable.safetensors", "--out", out / "w.safetensors"],
        "benchmark": ["benchmark", "--out", out / "bench.json"],
        "study": ["study", tmp_path / "study.yaml", "--out", out],
        "table": ["table", run, "--out", out / "table.md"],
    }[command]


@pytest.mark.parametrize("place", sorted(OUT_PLACES))
@pytest.mark.parametrize("command", ["fit", "demo", "predict", "report", "export", "weights", "benchmark", "study",
                                     "table"])
def test_out_in_an_impossible_place(command: str, place: str, run: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    make, needle = OUT_PLACES[place]
    out = make(tmp_path)
    cli(capsys, tmp_path, _argv(command, out, run, tmp_path), 2, "--out", needle)


def test_benchmark_profile_cannot_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, tmp_path, ["benchmark", "--profile", tmp_path], 2, "--profile", "is a folder")


def test_predict_out_is_the_input_folder(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    rgb_png(images / "a.png")
    cli(capsys, tmp_path, ["predict", images, "-m", run, "-o", images], 2, "is the input folder")


def test_predict_never_writes_over_an_input(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``a.png`` predicted into its own folder would become ``a_pred.png``, itself an input here."""
    a, a_pred = rgb_png(tmp_path / "in" / "a.png"), rgb_png(tmp_path / "in" / "a_pred.png", seed=1)
    cli(capsys, tmp_path, ["predict", a, a_pred, "-m", run, "-o", tmp_path / "in"], 2, "would overwrite the input")


@pytest.mark.parametrize(("target", "needle"), [
    ("run/metrics.safetensors", "metrics.json"),  # the sidecar would replace the run's metrics
    ("run/trainable.safetensors", "is the input"),
    ("model.json", "must end in .safetensors"),  # the sidecar would replace the weights
    ("exports", "is a folder"),
    ("notes.safetensors", "notes.json"),  # a user's file where the sidecar goes
])
def test_export_never_overwrites_what_it_should_not(target: str, needle: str, run: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "exports").mkdir()
    (tmp_path / "notes.json").write_text('{"mine": true}\n')
    cli(capsys, tmp_path, ["export", run, "--out", tmp_path / target], 2, needle)


def test_export_may_replace_its_own_earlier_export(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["classes"] == ["a", "b", "c"]


@pytest.mark.parametrize("where", [".", "report"])
def test_report_never_writes_into_a_run_folder(where: str, run: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, tmp_path, ["report", run, "--out", run / where], 2, "lies in the run folder")
    assert not (run / "report").exists()


def _junk(d: Path) -> Path:
    (d / "junk.pth").write_bytes(b"junk")
    return d / "junk.pth"


# weights convert: name -> (source file or name, extra arguments, what the one line must name)
CONVERT_CASES = {
    "garbage_source": (_junk, [], "junk.pth"),
    "missing_source": (lambda d: d / "missing.pth", [], "missing.pth"),
    "out_not_safetensors": (_junk, [], "must be a .safetensors"),
}


@pytest.mark.parametrize("case", sorted(CONVERT_CASES))
def test_bad_weights_convert(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, extra, needle = CONVERT_CASES[case]
    source = make(tmp_path)
    out = tmp_path / ("w.bin" if case == "out_not_safetensors" else "w.safetensors")
    cli(capsys, tmp_path, ["weights", "convert", source, "--out", out, *extra], 2, needle)
    assert not out.exists()


def test_weights_convert_never_overwrites_its_source(run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    source = run / "trainable.safetensors"
    cli(capsys, tmp_path, ["weights", "convert", source, "--out", source], 2, "overwrite the input")
