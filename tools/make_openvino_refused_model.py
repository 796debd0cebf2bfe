"""Writes tests/fixtures/openvino-refused/: a tiny classifier that ONNX Runtime
runs and OpenVINO refuses, for the engine-fallback test.

The graph is GlobalAveragePool -> Flatten -> ai.onnx.ml Scaler: three logits
(the per-channel means, scaled) from an NCHW image. ONNX Runtime implements
the ai.onnx.ml operators; OpenVINO's ONNX frontend has no Scaler.

Run with the project venv: .venv/bin/python tools/make_openvino_refused_model.py
"""

import pathlib

import onnx
from onnx import TensorProto, helper

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/openvino-refused"


def main() -> None:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Scaler", ["flat"], ["logits"], domain="ai.onnx.ml", offset=[0.0, 0.0, 0.0], scale=[1.0, 2.0, 3.0]),
    ]
    graph = helper.make_graph(nodes, "openvino-refused", [x], [y])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
        producer_name="lens tools/make_openvino_refused_model.py",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(model, OUT / "model.onnx")
    (OUT / "labels.txt").write_text("red\ngreen\nblue\n")
    (OUT / "model.toml").write_text(
        """# A tiny model ONNX Runtime runs and OpenVINO refuses (ai.onnx.ml Scaler).
# Made by tools/make_openvino_refused_model.py for the engine-fallback test.
name = "openvino-refused"
version = "1"
labels = "labels.txt"

[input]
name = "input"
layout = "NCHW"
width = 4
height = 4
channel_order = "RGB"

[preprocess]
resize = "squash"
interpolation = "bilinear"
mean = [0.0, 0.0, 0.0]
std = [255.0, 255.0, 255.0]

[output]
name = "logits"
kind = "logits"
"""
    )


if __name__ == "__main__":
    main()
