"""study.md: the claims with their verdicts, per-protocol tables, paired differences and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..runs.report import SOURCE_DOMAIN, human_count
from .runner import duration
from .spec import Study

METHOD = (
    "mIoU in %, from one confusion matrix per domain; the target mean averages the target domains "
    f"(`{SOURCE_DOMAIN}` is held-out source data, used only to select the checkpoint). Values are the mean "
    "± sample standard deviation (n − 1) over seeds. Paired differences subtract the reference config's "
    "target mean from the same seed's under the same protocol; their 95 % intervals are two-sided Student t "
    "intervals of the mean difference (df = n − 1). Verdicts: **supported** when the whole interval is above "
    "0, **contradicted** when it is below 0, **inconclusive at this sample size** when it contains 0 or only one "
    "seed is paired, **not run yet** when none is. Step time is the median wall time of one training step as `fit` "
    "records it (`timing.step_s` in metrics.json); the step cost adds the Fisher selections' time spread over the "
    "steps, and the cost column divides it by the baseline's mean step cost under the same protocol (cells ran one "
    "after another, alone on the machine, so the machine's drift between cells enters these ratios); wall time is "
    "the whole cell (training, selections, evaluation)."
)


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean_std(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "–"
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["std"] is not None else f"{s['mean']:.2f}"


def _interval(p: dict[str, Any]) -> str:
    return "–" if p["low"] is None else f"[{p['low']:+.2f}, {p['high']:+.2f}]"


def _diff(p: dict[str, Any]) -> str:
    return "–" if p["mean"] is None else f"{p['mean']:+.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


PAPER_NOTE = (
    "The paper column is the difference the paper reports for the same comparison in its own setting (DINOv2-L, "
    "Mask2Former, its datasets and schedule), beside ours for scale; it enters no verdict."
)


def _paper(claim: dict[str, Any]) -> str:
    paper = claim.get("paper")
    return "–" if paper is None else f"{paper['difference']:+.2f} ({paper['where']})"


def _claims(summary: dict[str, Any], figure: Path | None, out: Path) -> list[str]:
    claims = summary["claims"]
    if not claims:
        return []
    with_paper = any(c.get("paper") for c in claims)
    header = ["claim", "protocol", "difference", "seeds", "mean", "95 % interval", "verdict"]
    rows = [[c["name"], c["protocol"], f"`{c['better']}` − `{c['worse']}`", str(c["n"]), _diff(c), _interval(c),
             f"**{c['verdict']}**"] + ([_paper(c)] if with_paper else []) for c in claims]
    lines = ["## Claims", ""]
    if figure is not None:
        lines += [f"![claims]({quote(figure.relative_to(out).as_posix())})", ""]
    lines += _table(header + (["the paper"] if with_paper else []), rows)
    return lines + ([PAPER_NOTE, ""] if with_paper else [])


def _protocol(study: Study, name: str, s: dict[str, Any], figures: list[Path], out: Path) -> list[str]:
    description = study.protocols[name].description
    lines = [f"## Protocol {name}" + (f": {description}" if description else ""), ""]
    cost = s["relative_cost"]
    header = (["config", "seeds", "target mean"] + s["domains"]
              + ["trainable", "step (s)", f"cost (× `{cost['baseline']}`)", "wall per cell"])
    rows = []
    for config, c in s["configs"].items():
        relative = cost["configs"].get(config)
        seeds = ", ".join(map(str, c["seeds"])) or "none"
        if c["not_done"]:
            seeds += f" (not done: {', '.join(map(str, c['not_done']))})"
        params = None if c["trainable_params"] is None else round(c["trainable_params"])
        rows.append([f"`{config}`", seeds, _mean_std(c["target_mean_mIoU"])]
                    + [_mean_std(c["domains"][d]) for d in s["domains"]]
                    + [human_count(params), _num(c["step_s"], 3), _num(relative and relative["mean"]),
                       duration(c["wall_s"]) if c["wall_s"] else "–"])
    lines += _table(header, rows)
    if s["paired"]:
        lines += [f"Paired differences against `{study.reference}` (target-mean mIoU, same seed):", ""]
        rows = [[f"`{config}`", str(p["n"]), _diff(p), _interval(p), p["verdict"]] for config, p in s["paired"].items()]
        lines += _table(["config", "paired seeds", "mean difference", "95 % interval", "better than the reference"],
                        rows)
    elif study.reference not in s["configs"]:
        lines += [f"The reference `{study.reference}` does not run under this protocol: no paired differences.", ""]
    lines += [f"![{f.stem}]({quote(f.relative_to(out).as_posix())})" for f in figures] + [""]
    return lines


def _accuracy_against_cost(costs: dict[str, Path], out: Path) -> list[str]:
    if not costs:
        return []
    lines = ["## Accuracy against cost", "",
             "Per protocol: each config's target-mean mIoU (mean over seeds, 95 % t interval) against its step cost "
             "relative to the baseline (the range of the single seeds' ratios). Up and to the left is better.", ""]
    return lines + [f"![{p.stem}]({quote(p.relative_to(out).as_posix())})" for p in costs.values()] + [""]


def _not_done(summary: dict[str, Any]) -> list[str]:
    if not summary["not_done"]:
        return []
    rows = [[f"{c['protocol']}/{c['config']}/seed{c['seed']}", c["status"], (c["error"] or "").replace("|", "\\|"),
             f"`{c['command']}`"] for c in summary["not_done"]]
    return (["## Cells without results", "", "These cells enter no mean, difference or verdict.", ""]
            + _table(["cell", "status", "last error", "command"], rows))


def study_markdown(study: Study, summary: dict[str, Any], costs: dict[str, Path], figures: dict[str, list[Path]],
                   command: str, out: Path, claims_figure: Path | None = None) -> str:
    lines = [f"# Study: {study.name}", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    lines += _accuracy_against_cost(costs, out)
    lines += _claims(summary, claims_figure, out)
    lines += ["## How the numbers are made", "", "Reproduce with:", "", "```bash", command, "```", "",
              "Every cell's own command is in `results.json`.", "", METHOD, ""]
    for name, s in summary["protocols"].items():
        lines += _protocol(study, name, s, figures.get(name, []), out)
    lines += _not_done(summary)
    return "\n".join(lines)
