"""`crossearth-gate table`: our runs in the paper's layout, with the paper's numbers beside them.

Runs are matched to the paper's settings by the data their saved config.yaml records (source and target
dataset, CASID domain), not by run names, so renamed runs, study cells and multi-target runs all land in
the right rows. Reads run artefacts through report.load_run only; never training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

import yaml

from crossearth_gate.runs.report import Run, _dig, load_run
from crossearth_gate.util.atomic import atomic_write_text
from crossearth_gate.util.errors import UserError

PAPER_RESULTS = Path(__file__).resolve().parent.parent / "paper_results.yaml"
READ_FILES = ("metrics.json", "config.yaml", "gates.json")  # what load_run reads: never written over


@dataclass
class Row:
    """One line of the paper's tables: a setting, or a mean over settings."""

    key: str
    group: str
    title: str
    paper: dict[str, float]
    protocol: str | None = None
    source: dict[str, str] = field(default_factory=dict)
    target: dict[str, str] = field(default_factory=dict)
    of: list[str] = field(default_factory=list)  # settings a mean row averages; empty for a setting


@dataclass
class PaperResults:
    method: str
    groups: dict[str, str]
    rows: list[Row]  # in print order: each mean row after the last setting it averages

    @property
    def settings(self) -> list[Row]:
        return [row for row in self.rows if not row.of]


def load_paper_results(path: Path = PAPER_RESULTS) -> PaperResults:
    """The one data file of the paper's numbers, as rows in the paper's order."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    settings = [Row(key, s["group"], s["title"], s.get("miou") or {}, s["protocol"], s["source"], s["target"])
                for key, s in data["settings"].items()]
    rows = list(settings)
    for key, a in data["averages"].items():
        # after its last setting, and after the means of its parts (CASID: the four per-source means)
        last = max(i for i, row in enumerate(rows) if row.key in a["of"] or (row.of and set(row.of) <= set(a["of"])))
        rows.insert(last + 1, Row(key, a["group"], a["title"], a["miou"], of=list(a["of"])))
    return PaperResults(data["method"], data["groups"], rows)


def _matches(wanted: dict[str, str], spec: Any) -> bool:
    return isinstance(spec, dict) and all(spec.get(k) == v for k, v in wanted.items())


def _protocol(run: Run) -> str:
    """DA when the run trained with a domain-adaptation method, else DG (configs from before DA have none)."""
    return "DA" if _dig(run.config, "train.adaptation") not in (None, "none") else "DG"


@dataclass
class Scores:
    """Our target mIoU per paper setting (one value per run), and the runs that fit none."""

    by_setting: dict[str, list[float]] = field(default_factory=dict)
    protocols: dict[str, set[str]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)


def collect(runs: list[Run], paper: PaperResults) -> Scores:
    """Put every (run, target domain) that is one of the paper's settings into that setting's list."""
    scores = Scores()
    for run in runs:
        source = _dig(run.config, "data.source")
        targets = _dig(run.config, "data.targets") or {}
        hit = False
        for row in paper.settings:
            if not _matches(row.source, source):
                continue
            for name, spec in targets.items():
                value = run.score(name, "mIoU")
                if _matches(row.target, spec) and value is not None:
                    scores.by_setting.setdefault(row.key, []).append(value)
                    scores.protocols.setdefault(row.key, set()).add(_protocol(run))
                    hit = True
        if not hit:
            scores.unmatched.append(f"{run.name} ({run.run_dir})")
    return scores


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}".replace("-", "−") if signed else f"{value:.2f}"


def _best_baseline(paper: dict[str, float], method: str) -> str:
    others = {name: v for name, v in paper.items() if name != method}
    if not others:
        return "–"
    name = max(others, key=lambda n: others[n])
    return f"{others[name]:.1f} ({name})"


def _ours(row: Row, scores: Scores) -> tuple[float | None, str]:
    """(our mIoU, runs cell): a setting's mean over its runs; a mean row's mean over its settings' means,
    with how many of its settings have runs."""
    if not row.of:
        values = scores.by_setting.get(row.key, [])
        return (mean(values) if values else None), str(len(values) or "–")
    parts = [scores.by_setting[key] for key in row.of if key in scores.by_setting]
    ours = mean(mean(p) for p in parts) if len(parts) == len(row.of) else None
    return ours, f"{len(parts)}/{len(row.of)}"


def render(scores: Scores, paper: PaperResults) -> str:
    """Markdown: one table per group of the paper, its means in bold, then the runs that fit no setting."""
    method = paper.method
    lines = [f"# Our runs beside the paper ({method})", "",
             f"mIoU in %. *paper* columns: {method} and its strongest baseline as the paper reports them "
             f"(`{PAPER_RESULTS.name}`; – where the paper gives none); Δ = ours − paper's {method}. *runs*: runs "
             "averaged (seeds); for a mean row, its settings that have runs: it is filled only when all have.", ""]
    for group, heading in paper.groups.items():
        rows = [row for row in paper.rows if row.group == group]
        lines += [f"## {heading}", "", f"| setting | runs | ours | paper {method} | paper best baseline | Δ |",
                  "|---|---:|---:|---:|---|---:|"]
        for row in rows:
            ours, runs = _ours(row, scores)
            theirs = row.paper.get(method)
            delta = ours - theirs if ours is not None and theirs is not None else None
            title = f"**{row.title}**" if row.of else row.title
            ran = scores.protocols.get(row.key, set()) - {row.protocol}
            if ran:
                title += f", ours {'/'.join(sorted(ran))} (paper {row.protocol})"
            paper_cell = "–" if theirs is None else f"{theirs:.1f}"
            lines.append(f"| {title} | {runs} | {_fmt(ours)} | {paper_cell} | "
                         f"{_best_baseline(row.paper, method)} | {_fmt(delta, signed=True)} |")
        lines.append("")
    if scores.unmatched:
        lines += ["Runs that are none of the paper's settings (by their recorded source and targets): "
                  + "; ".join(scores.unmatched), ""]
    return "\n".join(lines)


def _refuse_overwriting_inputs(out: Path, run_dirs: list[Path]) -> None:
    target = out.resolve()
    for run_dir in run_dirs:
        inputs = {run_dir.resolve(), *((run_dir / name).resolve() for name in READ_FILES)}
        if target in inputs:
            raise UserError(f"--out {out} would overwrite an input of run {run_dir}: write the table elsewhere")
    if target.is_dir():
        raise UserError(f"--out {out} is a directory: give a file name such as table.md")


def table_cli(run_dirs: list[Path], out: Path | None) -> str:
    """Build the table from run directories; write it atomically to ``out`` when given; return it."""
    if out is not None:
        _refuse_overwriting_inputs(out, run_dirs)
    paper = load_paper_results()
    scores = collect([load_run(d) for d in run_dirs], paper)
    if not scores.by_setting:
        raise UserError("none of the runs is one of the paper's settings (see configs/benchmarks/)")
    text = render(scores, paper)
    if out is not None:
        atomic_write_text(out, text)
    return text
