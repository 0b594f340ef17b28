"""`crossearth-gate table` on made-up run directories, against a table written out by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from crossearth_gate.cli import main
from crossearth_gate.runs.table import load_paper_results
from support.paths import BENCHMARKS

CASID = "$CEG_DATA/CASID"


def _casid(domain: str, split: str) -> dict[str, Any]:
    return {"dataset": "casid", "root": CASID, "domain": domain, "split": split}


def _run(root: Path, name: str, source: dict[str, Any], targets: dict[str, tuple[dict[str, Any], float]],
         adaptation: str | None = None) -> Path:
    """A run directory as `fit` leaves it, reduced to what the table reads: config.yaml and metrics.json."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"name": name, "data": {"source": source, "targets": {t: spec for t, (spec, _) in targets.items()}},
              "train": {"adaptation": adaptation} if adaptation else {"lr": 1e-5}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    domains = {"source_val": {"mIoU": 70.0}} | {t: {"mIoU": miou} for t, (_, miou) in targets.items()}
    (run_dir / "metrics.json").write_text(json.dumps({"run": {"name": name}, "domains": domains}))
    return run_dir


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    potsdam = {"dataset": "potsdam", "root": "/d/potsdam", "split": "train"}
    vaihingen = {"dataset": "vaihingen", "root": "/d/vaihingen", "split": "val"}
    return [
        _run(tmp_path, "sub2tem", _casid("sub", "train"), {"tem": (_casid("tem", "test"), 58.0)}),
        # one run, two targets: two settings of the paper (and renamed: names do not matter)
        _run(tmp_path, "my-renamed-run", _casid("sub", "train"),
             {"a": (_casid("tms", "test"), 59.0), "b": (_casid("trf", "test"), 61.0)}),
        _run(tmp_path, "p2v-seed0", potsdam, {"vaihingen": (vaihingen, 66.0)}),
        _run(tmp_path, "p2v-seed1", potsdam, {"vaihingen": (vaihingen, 67.0)}),
        _run(tmp_path, "rgb2rescue", {"dataset": "potsdam_rescue", "root": "/d/p", "split": "train"},
             {"rescuenet": ({"dataset": "rescuenet", "root": "/d/r", "split": "test"}, 61.0)}),
        _run(tmp_path, "u2r-dacs", {"dataset": "loveda_urban", "root": "/d/u", "split": "train"},
             {"rural": ({"dataset": "loveda_rural", "root": "/d/r", "split": "val"}, 50.0)}, adaptation="dacs"),
        _run(tmp_path, "demo", {"dataset": "dubai", "root": "/d/dubai", "tiles": [1]},
             {"tile_5": ({"dataset": "dubai", "root": "/d/dubai", "tiles": [5]}, 40.0)}),
    ]


EXPECTED = """\
# Our runs beside the paper (CrossEarth-Gate)

mIoU in %. *paper* columns: CrossEarth-Gate and its strongest baseline as the paper reports them \
(`paper_results.yaml`; – where the paper gives none); Δ = ours − paper's CrossEarth-Gate. *runs*: runs \
averaged (seeds); for a mean row, its settings that have runs: it is filled only when all have.

## CASID climate zones (DG; paper Table "CASID")

| setting | runs | ours | paper CrossEarth-Gate | paper best baseline | Δ |
|---|---:|---:|---:|---|---:|
| Sub → Tem | 1 | 58.00 | – | – | – |
| Sub → Tms | 1 | 59.00 | – | – | – |
| Sub → Trf | 1 | 61.00 | – | – | – |
| **Sub → others (mean)** | 3/3 | 59.33 | 60.6 | 57.2 (LoRA) | −1.27 |
| Tem → Sub | – | – | – | – | – |
| Tem → Tms | – | – | – | – | – |
| Tem → Trf | – | – | – | – | – |
| **Tem → others (mean)** | 0/3 | – | 65.1 | 64.5 (Earth-Adapter) | – |
| Tms → Sub | – | – | – | – | – |
| Tms → Tem | – | – | – | – | – |
| Tms → Trf | – | – | – | – | – |
| **Tms → others (mean)** | 0/3 | – | 59.3 | 58.0 (AdaptFormer) | – |
| Trf → Sub | – | – | – | – | – |
| Trf → Tem | – | – | – | – | – |
| Trf → Tms | – | – | – | – | – |
| **Trf → others (mean)** | 0/3 | – | 62.4 | 61.8 (AdaptFormer) | – |
| **CASID mean (12 settings)** | 3/12 | – | 61.9 | 59.6 (All modules on, ablation) | – |

## Disaster, Potsdam → RescueNet (DG)

| setting | runs | ours | paper CrossEarth-Gate | paper best baseline | Δ |
|---|---:|---:|---:|---|---:|
| Potsdam RGB → RescueNet | 1 | 61.00 | 60.1 | – | +0.90 |
| Potsdam IRRG → RescueNet | – | – | 58.6 | – | – |

## Domain adaptation (paper Table "DA")

| setting | runs | ours | paper CrossEarth-Gate | paper best baseline | Δ |
|---|---:|---:|---:|---|---:|
| P2V (Potsdam RGB → Vaihingen IRRG), ours DG (paper DA) | 2 | 66.50 | 68.2 | 67.1 (Earth-Adapter) | −1.70 |
| V2P (Vaihingen IRRG → Potsdam RGB) | – | – | 62.4 | 61.6 (Earth-Adapter) | – |
| R2U (LoveDA Rural → Urban) | – | – | 56.5 | 56.0 (Earth-Adapter) | – |
| U2R (LoveDA Urban → Rural) | 1 | 50.00 | 49.1 | 47.5 (Earth-Adapter) | +0.90 |
| **DA mean (4 settings)** | 2/4 | – | 59.1 | 58.1 (Earth-Adapter) | – |

Runs that are none of the paper's settings (by their recorded source and targets): demo ({demo})
"""


def test_table_matches_the_hand_written_one(runs: list[Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tables" / "table.md"
    assert main(["table", *map(str, runs), "--out", str(out)]) == 0
    expected = EXPECTED.replace("{demo}", str(runs[-1]))
    assert out.read_text() == expected
    assert capsys.readouterr().out.startswith(expected)


def test_every_setting_has_a_config_and_every_mean_its_settings() -> None:
    paper = load_paper_results()
    configs = BENCHMARKS
    assert sorted(row.key for row in paper.settings) == sorted(p.stem for p in configs.glob("[!_]*.yaml"))
    keys = {row.key for row in paper.settings}
    assert all(set(row.of) <= keys for row in paper.rows if row.of)
    assert all(isinstance(v, float) and 30 < v < 80 for row in paper.rows for v in row.paper.values())


def test_out_never_overwrites_an_input(runs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    metrics = runs[0] / "metrics.json"
    before = metrics.read_text()
    for out in (metrics, runs[0] / "config.yaml"):
        assert main(["table", *map(str, runs), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "would overwrite an input" in err[0]
    assert main(["table", *map(str, runs), "--out", str(runs[0])]) == 2  # a folder, and a run's own
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(runs[0]) in err[0]
    assert metrics.read_text() == before


def test_no_paper_setting_is_one_line(runs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", str(runs[-1])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of the runs is one of the paper's settings" in err[0]
