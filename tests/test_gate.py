"""The gate: schedule, gates.json format, resume, and that only the active slots train."""

from __future__ import annotations

import json

import pytest
import torch

from crossearth_gate.gating import FisherSelector, Gate, GateSchedule, RandomSelector
from crossearth_gate.util.errors import UserError
from support.slotnet import TinySlotNet, make_data, per_sample_ce


def test_schedule_warmup_and_every():
    schedule = GateSchedule(every=3, warmup=2)
    assert [s for s in range(12) if schedule.is_due(s)] == [2, 5, 8, 11]
    assert [s for s in range(4) if GateSchedule(every=1).is_due(s)] == [0, 1, 2, 3]


@pytest.mark.parametrize(("every", "warmup"), [(0, 0), (-1, 0), (2, -1), (1.5, 0), (True, 0)])
def test_schedule_rejects(every, warmup):
    with pytest.raises(UserError):
        GateSchedule(every, warmup)


def make_gate(selector=None, k: int | float = 2) -> tuple[TinySlotNet, Gate]:
    torch.manual_seed(0)
    model = TinySlotNet()
    return model, Gate(model, selector or FisherSelector(), k, GateSchedule(every=2, warmup=1), num_samples=4)


def run_steps(gate: Gate, model: TinySlotNet, steps: range) -> list[int]:
    selected = []
    for step in steps:
        if gate.maybe_select(step, model, [make_data(4, seed=step)], per_sample_ce) is not None:
            selected.append(step)
    return selected


def test_gate_selects_on_schedule_and_records_history():
    model, gate = make_gate()
    assert run_steps(gate, model, range(6)) == [1, 3, 5]
    assert model.active_slots() == gate.history[-1].selection.active
    assert gate.maybe_select(5, model, [make_data(4, seed=0)], per_sample_ce) is None  # already done

    record = json.loads(json.dumps(gate.to_dict()))
    assert set(record) == {"k", "selector", "selections"}
    assert record["k"] == 2 and record["selector"] == "fisher"
    assert [s["step"] for s in record["selections"]] == [1, 3, 5]
    for selection in record["selections"]:
        assert set(selection) == {"step", "raw", "normalized", "active"}
        assert list(selection["raw"]) == model.slot_names == list(selection["normalized"])
        assert all(isinstance(v, float) for v in selection["raw"].values())
        assert len(selection["active"]) == 2 and set(selection["active"]) <= set(model.slot_names)


def test_k_fraction_and_bad_arguments():
    assert make_gate(k=0.5)[1].k == 3
    model = TinySlotNet()
    with pytest.raises(UserError):
        Gate(model, FisherSelector(), 7, GateSchedule(1), 4)
    with pytest.raises(UserError):
        Gate(model, FisherSelector(), 2, GateSchedule(1), 0)


def test_state_dict_round_trip_restores_active_set_and_history():
    model, gate = make_gate()
    run_steps(gate, model, range(4))
    state = json.loads(json.dumps(gate.state_dict()))

    resumed_model, resumed = make_gate()
    assert resumed_model.active_slots() == resumed_model.slot_names
    resumed.load_state_dict(state)
    assert resumed_model.active_slots() == model.active_slots() != model.slot_names
    assert resumed.to_dict() == gate.to_dict()
    assert run_steps(resumed, resumed_model, range(3, 6)) == [5]  # step 3 was done before the kill


def test_load_state_dict_rejects_other_config():
    model, gate = make_gate()
    run_steps(gate, model, range(2))
    state = gate.state_dict()
    with pytest.raises(UserError, match="selector"):
        make_gate(RandomSelector(0))[1].load_state_dict(state)
    with pytest.raises(UserError, match="k="):
        make_gate(k=3)[1].load_state_dict(state)
    with pytest.raises(UserError, match="does not have"):
        make_gate()[1].load_state_dict({**state, "active": ["spatial.9"]})
    with pytest.raises(UserError, match="malformed"):
        make_gate()[1].load_state_dict({"k": 2})


def _slot_tensors(model: TinySlotNet) -> dict[str, list[torch.Tensor]]:
    return {n: [p.detach().clone() for p in model.slot_parameters(n)] for n in model.slot_names}


@pytest.mark.parametrize("recreate", [True, False])
def test_one_step_trains_only_active_slots(recreate):
    model, gate = make_gate(RandomSelector(3), k=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.05)
    x, y = make_data(4, seed=9)
    # One step with everything active, so the persistent optimiser has state for every slot.
    per_sample_ce(model(x), y).mean().backward()
    optimizer.step()

    selection = gate.maybe_select(1, model, [], per_sample_ce)
    assert selection is not None and model.active_slots() == selection.active
    if recreate:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    optimizer.zero_grad(set_to_none=True)
    before = _slot_tensors(model)
    per_sample_ce(model(x), y).mean().backward()
    optimizer.step()

    after = _slot_tensors(model)
    for name in model.slot_names:
        same = all(torch.equal(b, a) for b, a in zip(before[name], after[name], strict=True))
        assert same == (name not in selection.active), name
