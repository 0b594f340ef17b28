"""Slot names without torch: the three module types and ``"<type>.<layer>"``, for code that only reads them
(run folders, figures, the config)."""

from __future__ import annotations

import typing
from typing import Literal

from ..util.errors import UserError

SlotType = Literal["spatial", "semantic", "frequency"]
SLOT_TYPES: tuple[SlotType, ...] = typing.get_args(SlotType)  # the order of the gate's tie-break and of every figure


def slot_name(slot_type: str, layer: int) -> str:
    return f"{slot_type}.{layer}"


def parse_slot(name: str) -> tuple[str, int]:
    slot_type, _, layer = name.partition(".")
    if slot_type not in SLOT_TYPES or not layer.isdigit():
        raise UserError(f"bad slot name {name!r}: expected '<type>.<layer>' with type in {list(SLOT_TYPES)}")
    return slot_type, int(layer)
