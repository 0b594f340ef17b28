"""Fisher-guided gating: score the slots, pick the top k, re-select on a schedule (no Lightning here)."""

from .budget import Budget, BudgetedSelector, budgeted_top_k
from .calibration import calibrate, measured_cost_model
from .costs import CostModel
from .fisher import FISHER_METHODS, SlotStats, Switchboard, slot_fisher, slot_gradnorm
from .gate import Gate, GateSchedule, Record
from .selection import (
    SELECTORS,
    FisherSelector,
    GradNormSelector,
    RandomSelector,
    Selection,
    Selector,
    make_selector,
    normalize_per_type,
    resolve_k,
    slot_order,
    top_k,
)

__all__ = [
    "FISHER_METHODS",
    "SELECTORS",
    "Budget",
    "BudgetedSelector",
    "CostModel",
    "FisherSelector",
    "Gate",
    "GateSchedule",
    "GradNormSelector",
    "RandomSelector",
    "Record",
    "Selection",
    "Selector",
    "SlotStats",
    "Switchboard",
    "budgeted_top_k",
    "calibrate",
    "make_selector",
    "measured_cost_model",
    "normalize_per_type",
    "resolve_k",
    "slot_fisher",
    "slot_gradnorm",
    "slot_order",
    "top_k",
]
