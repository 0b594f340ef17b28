"""The optional ONNX packages, imported only when an ONNX export or prediction asks for them."""

from __future__ import annotations

from types import ModuleType

from ..util.errors import UserError

EXTRA = "pip install 'crossearth-gate[onnx]'"


def require(name: str) -> ModuleType:
    """``onnx`` or ``onnxruntime``, or one line naming the extra that installs it."""
    try:
        if name == "onnx":
            import onnx

            return onnx
        import onnxruntime

        return onnxruntime
    except ImportError:
        raise UserError(f"ONNX export and prediction need the {name} package: {EXTRA}") from None
