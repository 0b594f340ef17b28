"""From cell records to the study's numbers: per-config summaries, paired differences, claim verdicts.

Only cells with status "done" enter any mean; a failed or missing cell is listed, never counted as 0.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .records import DONE
from .spec import Study
from .stats import Paired, mean_interval, paired_difference, summarize, verdict


def _by_seed(done: list[dict[str, Any]], protocol: str, config: str) -> dict[int, float]:
    return {c["seed"]: c["target_mean_mIoU"] for c in done
            if c["protocol"] == protocol and c["config"] == config and c["target_mean_mIoU"] is not None}


def _paired(p: Paired) -> dict[str, Any]:
    return {"n": p.n, **asdict(p), "seeds": list(p.seeds), "differences": list(p.differences), "verdict": verdict(p)}


def _values(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in runs if isinstance(r.get(key), int | float)]


def _config_summary(runs: list[dict[str, Any]], domains: list[str], not_done: list[int]) -> dict[str, Any]:
    target = summarize(_values(runs, "target_mean_mIoU"))
    interval = mean_interval(target)
    return {
        "seeds": sorted(r["seed"] for r in runs),
        "not_done": sorted(not_done),
        "target_mean_mIoU": asdict(target),
        "target_mean_interval": None if interval is None else list(interval),
        "domains": {d: asdict(summarize(r["domains"][d]["mIoU"] for r in runs
                                        if isinstance(r["domains"].get(d, {}).get("mIoU"), int | float)))
                    for d in domains},
        "trainable_params": summarize(_values(runs, "trainable_params")).mean,
        "step_s": summarize(_values(runs, "step_s")).mean,
        "step_cost_s": summarize(_values(runs, "step_cost_s")).mean,
        "wall_s": summarize(_values(runs, "wall_s")).mean,
    }


def _relative_costs(in_protocol: list[dict[str, Any]], configs: dict[str, Any], reference: str) -> dict[str, Any]:
    """Each config's step cost over the baseline's mean (the reference, else the protocol's first config with a
    cost): the mean ratio and the range of the single seeds' ratios. Cells ran at different times, so the range
    includes the machine's drift."""
    costed = [name for name, c in configs.items() if c["step_cost_s"]]
    if not costed:
        return {"baseline": None, "configs": {}}
    baseline = reference if reference in costed else costed[0]
    base = configs[baseline]["step_cost_s"]
    relative = {}
    for name in costed:
        ratios = [c["step_cost_s"] / base for c in in_protocol
                  if c["config"] == name and c["status"] == DONE and isinstance(c.get("step_cost_s"), int | float)]
        relative[name] = {"n": len(ratios), "mean": sum(ratios) / len(ratios), "low": min(ratios), "high": max(ratios)}
    return {"baseline": baseline, "configs": relative}


def aggregate(cells: list[dict[str, Any]], study: Study) -> dict[str, Any]:
    """Everything study.md and the figures show, as plain JSON-ready data."""
    done = [c for c in cells if c["status"] == DONE]
    protocols: dict[str, Any] = {}
    for protocol in study.protocols:
        in_protocol = [c for c in cells if c["protocol"] == protocol]
        domains = list(dict.fromkeys(d for c in in_protocol if c["status"] == DONE for d in c["domains"]))
        configs = {}
        for name, entry in study.configs.items():
            if protocol not in entry.seeds:
                continue
            mine = [c for c in in_protocol if c["config"] == name]
            runs = [c for c in mine if c["status"] == DONE]
            configs[name] = _config_summary(runs, domains, [c["seed"] for c in mine if c["status"] != DONE])
        reference = _by_seed(done, protocol, study.reference)
        paired = {name: _paired(paired_difference(_by_seed(done, protocol, name), reference))
                  for name in configs if name != study.reference} if study.reference in configs else {}
        protocols[protocol] = {"domains": domains, "configs": configs, "paired": paired,
                               "relative_cost": _relative_costs(in_protocol, configs, study.reference)}
    claims = []
    for claim in study.claims:
        p = paired_difference(_by_seed(done, claim.protocol, claim.better), _by_seed(done, claim.protocol, claim.worse))
        claims.append({**asdict(claim), **_paired(p)})
    not_done = [{k: c[k] for k in ("protocol", "config", "seed", "status", "command")} | {"error": c.get("error")}
                for c in cells if c["status"] != DONE]
    return {"reference": study.reference, "protocols": protocols, "claims": claims, "not_done": not_done}
