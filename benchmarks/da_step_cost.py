"""DG vs DA training-step cost, alternating single steps in one process (same load for both): real weights,
the Dubai protocol (forward, backward, AdamW step; DA also its teacher, ClassMix and EMA update).

Each round times one DG and one DA step; the ratio is computed per round (same load for its two steps)
and reported as median with its min-max, with the benchmark's warning when that spread is wider than ±0.05.

    python benchmarks/da_step_cost.py ROUNDS
"""
import statistics
import sys
import time

import torch

from crossearth_gate.benchmark.spread import spread, warning_line, wide
from crossearth_gate.config.schema import load_config
from crossearth_gate.data import get_dataset_info
from crossearth_gate.training.adaptation import DACSTask, build_task
from crossearth_gate.training.run import build_datamodule

rounds = int(sys.argv[1])


def forever(dm):
    while True:
        yield from dm.train_dataloader()

tasks = {}
for name in ("dubai_dg", "dubai_da"):
    cfg = load_config(name)
    info = get_dataset_info(cfg.data.source.dataset)
    task = build_task(cfg, list(info.classes), list(info.palette), ["source_val", *cfg.data.targets])
    dm = build_datamodule(cfg, task.model.backbone.info.mean, task.model.backbone.info.std)
    dm.setup("fit")
    if isinstance(task, DACSTask):  # no trainer here, so no setup hook: its target images given by hand
        task.attach(dm.unlabelled_dataloader().dataset)
    task.log = lambda *a, **k: None  # no trainer here: logging is not part of the step's cost
    opt = torch.optim.AdamW([p for n, p in task.model.named_parameters() if not n.startswith("backbone.")], lr=3e-4)
    tasks[name] = (task, opt, forever(dm))
times = {name: [] for name in tasks}
for _ in range(rounds):  # alternate single steps, so both see the same load
    for name, (task, opt, it) in tasks.items():
        task.train()
        batch = next(it)
        start = time.perf_counter()
        loss = task.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if name == "dubai_da":
            task.on_train_batch_end(None, batch, 0)
        times[name].append(time.perf_counter() - start)
for name, t in times.items():
    print(f"{name}: median {statistics.median(t):.3f} s/step over {len(t)} steps (min {min(t):.3f})")
ratio = spread([da / dg for da, dg in zip(times["dubai_da"], times["dubai_dg"], strict=True)])
print(f"ratio DA/DG per round: median {ratio['median']:.2f} (min {ratio['min']:.2f}, max {ratio['max']:.2f})")
if line := warning_line(wide({"DA/DG": ratio}), rounds):
    print(line)
