"""Cross-run report built from saved artefacts only (metrics.json, gates.json, logs, samples).

It never imports training code, so a report can be made anywhere the run directories were copied.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from crossearth_gate.runs.plots import plot_gate_map, plot_per_class_iou, plot_pseudo_confidence, plot_training_curves
from crossearth_gate.util.atomic import atomic_write_json, atomic_write_text
from crossearth_gate.util.errors import UserError

SOURCE_DOMAIN = "source_val"
MAX_SAMPLES = 6


@dataclass
class Run:
    """One run directory's artefacts; ``name`` is unique within a report, ``slug`` is file-safe."""

    run_dir: Path
    name: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    gates: dict[str, Any] | None

    @property
    def slug(self) -> str:
        return _slug(self.name)

    def meta(self, key: str, config_key: str) -> Any:
        """A value from metrics.json ``run`` (authoritative, may be null), else from config.yaml."""
        run = self.metrics.get("run")
        if isinstance(run, dict) and key in run:
            return run[key]
        return _dig(self.config, config_key)

    def score(self, domain: str, metric: str) -> float | None:
        value = self.metrics["domains"].get(domain, {}).get(metric)
        return float(value) if isinstance(value, int | float) else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "run"


def _dig(mapping: Any, dotted: str) -> Any:
    """``_dig(cfg, "gate.k")`` → ``cfg["gate"]["k"]``, or None where any level is missing."""
    for part in dotted.split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            return None
        mapping = mapping[part]
    return mapping


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def load_run(run_dir: str | Path) -> Run:
    """Read one run directory; metrics.json is required, everything else optional."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise UserError(f"{run_dir}: no metrics.json (was the test stage run?)")
    metrics = _read_json(metrics_path)
    domains = metrics.get("domains")
    if not isinstance(domains, dict) or not domains or not all(isinstance(d, dict) for d in domains.values()):
        raise UserError(f"{metrics_path}: 'domains' must map each domain to its metrics")
    config: Any = {}
    if (run_dir / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise UserError(f"{run_dir / 'config.yaml'}: not valid YAML") from exc
    config = config if isinstance(config, dict) else {}
    gates = _read_json(run_dir / "gates.json") if (run_dir / "gates.json").is_file() else None
    name = next((n for n in (_dig(metrics, "run.name"), config.get("name")) if isinstance(n, str) and n),
                run_dir.name)
    return Run(run_dir, name, metrics, config, gates)


def _make_unique(runs: list[Run]) -> None:
    """Suffix colliding names (``a``, ``a-2``) so figures and table rows never overwrite each other."""
    seen: set[str] = set()
    for run in runs:
        base, i = run.name, 1
        while run.slug.lower() in seen:
            i += 1
            run.name = f"{base}-{i}"
        seen.add(run.slug.lower())


def human_count(n: int | None) -> str:
    """``1234567`` → ``"1.23 M"``."""
    if n is None:
        return "–"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


def ordered_domains(runs: list[Run]) -> tuple[list[str], list[str]]:
    """(all domains with source_val first, target domains sorted) over the union of runs."""
    names = {d for run in runs for d in run.metrics["domains"]}
    targets = sorted(names - {SOURCE_DOMAIN})
    return ([SOURCE_DOMAIN] if SOURCE_DOMAIN in names else []) + targets, targets


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Table data: one record per run. The target mean is left empty if a run misses any target."""
    domains, targets = ordered_domains(runs)
    records = []
    for run in runs:
        params = run.metrics.get("params") if isinstance(run.metrics.get("params"), dict) else {}
        target_scores = [run.score(d, "mIoU") for d in targets]
        complete = bool(targets) and None not in target_scores
        records.append({
            "name": run.name,
            "dir": str(run.run_dir.resolve()),
            "mode": run.meta("mode", "toolbox.mode"),
            "selector": run.meta("selector", "gate.selector"),
            "k": run.meta("k", "gate.k"),
            "backbone": _dig(run.metrics, "backbone.name") or _dig(run.config, "model.backbone"),
            "weights": _dig(run.metrics, "backbone.weights.source") or _dig(run.metrics, "backbone.weights"),
            "trainable_params": params.get("trainable"),
            "total_params": params.get("total"),
            "mIoU": {d: run.score(d, "mIoU") for d in domains},
            "mF1": {d: run.score(d, "mF1") for d in domains},
            "target_mean_mIoU": sum(target_scores) / len(targets) if complete else None,
        })
    return {"source_domain": SOURCE_DOMAIN, "domains": domains, "target_domains": targets, "runs": records}


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def runs_table(summary: dict[str, Any]) -> str:
    """Markdown table: metadata, mIoU per domain + target mean, then mF1 per domain (all in %)."""
    domains = summary["domains"]
    header = ["run", "mode", "selector", "k", "trainable"]
    header += [f"mIoU {d}" for d in domains] + ["mIoU target mean"] + [f"mF1 {d}" for d in domains]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 5 + "---:|" * (2 * len(domains) + 1)]
    for r in summary["runs"]:
        row = [r["name"], r["mode"], r["selector"], r["k"], human_count(r["trainable_params"])]
        row += [r["mIoU"][d] for d in domains] + [r["target_mean_mIoU"]] + [r["mF1"][d] for d in domains]
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _pick_samples(run_dir: Path) -> list[Path]:
    """Up to MAX_SAMPLES images, taken round-robin across domains so every domain is shown."""
    by_domain: dict[str, list[Path]] = {}
    for png in sorted((run_dir / "samples").glob("*.png")):
        by_domain.setdefault(png.stem.rpartition("_")[0] or png.stem, []).append(png)
    for files in by_domain.values():
        files.sort(key=lambda p: (len(p.stem), p.stem))
    picked: list[Path] = []
    for i in range(max(map(len, by_domain.values()), default=0)):
        picked += [files[i] for files in by_domain.values() if i < len(files)]
    return picked[:MAX_SAMPLES]


def _link(out_dir: Path, path: Path, alt: str) -> str:
    return f"![{alt}]({quote(path.relative_to(out_dir).as_posix())})"


def _run_section(run: Run, record: dict[str, Any], out_dir: Path) -> list[str]:
    """Per-run figures (gate map, curves, a DA run's teacher confidence, samples) and the markdown for them."""
    lines = [f"### {run.name}", "", f"- directory: `{record['dir']}`",
             f"- backbone: {_cell(record['backbone'])} (weights: {_cell(record['weights'])})"]
    if record["trainable_params"] is not None and record["total_params"]:
        share = 100 * record["trainable_params"] / record["total_params"]
        lines.append(f"- trainable: {human_count(record['trainable_params'])} of "
                     f"{human_count(record['total_params'])} ({share:.2f} %)")
    lines.append("")
    if run.gates is not None and run.gates.get("selections"):
        fig = plot_gate_map(run.gates, out_dir / f"gate_map_{run.slug}.png")
        lines += ["**Gate map**", "", _link(out_dir, fig, f"gate map {run.name}"), ""]
    elif run.gates is not None:
        lines += ["Gate map: gates.json holds no selections yet.", ""]
    log = run.run_dir / "logs" / "metrics.csv"
    if log.is_file():
        try:
            fig = plot_training_curves(log, out_dir / f"curves_{run.slug}.png", title=run.name)
            lines += ["**Training curves**", "", _link(out_dir, fig, f"curves {run.name}"), ""]
        except UserError as exc:
            lines += [f"Training curves: skipped ({exc}).", ""]
    adapted = _dig(run.config, "train.adaptation") not in (None, "none")
    threshold = _dig(run.config, "adaptation.confidence")
    if adapted and log.is_file() and isinstance(threshold, int | float):
        try:
            fig = plot_pseudo_confidence(log, out_dir / f"pseudo_confidence_{run.slug}.png", float(threshold))
            lines += ["**Teacher confidence (domain adaptation)**", "", _link(out_dir, fig, f"confidence {run.name}"),
                      ""]
        except UserError as exc:
            lines += [f"Teacher confidence: skipped ({exc}).", ""]
    samples = _pick_samples(run.run_dir)
    if samples:
        dest = out_dir / "samples" / run.slug
        dest.mkdir(parents=True, exist_ok=True)
        copies = [Path(shutil.copyfile(src, dest / src.name)) for src in samples]
        lines += ["**Samples**", "", " ".join(_link(out_dir, c, c.stem) for c in copies), ""]
    return lines


def write_report(run_dirs: list[Path], out_dir: Path) -> Path:
    """Write report.md, runs_table.md, summary.json and all figures into ``out_dir``; return report.md."""
    if not run_dirs:
        raise UserError("no run directories given")
    inside = [d for d in run_dirs if Path(out_dir).resolve().is_relative_to(Path(d).resolve())]
    if inside:
        raise UserError(f"--out {out_dir} lies in the run folder {inside[0]}: a report never writes into a run")
    runs = [load_run(d) for d in run_dirs]
    _make_unique(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    table = runs_table(summary)
    atomic_write_text(out_dir / "runs_table.md", table)
    atomic_write_json(out_dir / "summary.json", summary)

    names = ", ".join(f"`{r.name}`" for r in runs)
    lines = ["# CrossEarth-Gate report", "", f"Runs ({len(runs)}): {names}", ""]
    lines += ["## Results", "", f"mIoU and mF1 in %. `{SOURCE_DOMAIN}` is held-out source data; "
              "the target mean averages the target domains (empty if a run misses one).", "", table]
    metrics_by_name = {r.name: r.metrics for r in runs}
    if summary["target_domains"]:
        lines += ["## Per-class IoU on target domains", ""]
    for domain in summary["target_domains"]:
        fig = plot_per_class_iou(metrics_by_name, domain, out_dir / f"per_class_iou_{_slug(domain)}.png")
        lines += [f"### {domain}", "", _link(out_dir, fig, f"per-class IoU {domain}"), ""]
    lines += ["## Runs", ""]
    for run, record in zip(runs, summary["runs"], strict=True):
        lines += _run_section(run, record, out_dir)
    return atomic_write_text(out_dir / "report.md", "\n".join(lines))
