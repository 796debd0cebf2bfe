#!/usr/bin/env python3
"""OpenVINO on its own, without Lens: img/s of the model in f32 and bf16, with a
dynamic, a static and a bounded batch dimension, one stream and one thread.

    .venv/bin/python tools/openvino_probe.py [MODEL_ONNX] [--seconds S]

It tells whether a figure of `lens bench --model-only --engine openvino` is the
CPU's or Lens's: on a CPU where OpenVINO's bf16 kernels are slower than its
f32 ones, this says so too. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import openvino as ov

ROOT = Path(__file__).resolve().parents[1]


def measure(core: ov.Core, path: Path, shape: str, precision: str, seconds: float) -> tuple[float, str]:
    model = core.read_model(str(path))
    if shape == "static":
        model.reshape([1, 3, 224, 224])
    elif shape == "bounded":
        model.reshape([ov.Dimension(1, 8), 3, 224, 224])
    config = {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "1",
              "ENABLE_CPU_PINNING": "NO"}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    for _ in range(20):
        request.infer({0: x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        request.infer({0: x})
        n += 1
    return n / (time.perf_counter() - t0), str(compiled.get_property("INFERENCE_PRECISION_HINT"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", type=Path, default=ROOT / "models" / "efficientnet-lite0" / "model.onnx")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    core = ov.Core()
    print(f"OpenVINO {ov.__version__}, {args.model}")
    for shape in ("dynamic", "static", "bounded"):
        for precision in ("f32", "bf16"):
            ips, actual = measure(core, args.model, shape, precision, args.seconds)
            print(f"{shape:8s} {precision:5s} (compiled: {actual}) {ips:7.1f} img/s, 1 stream x 1 thread", flush=True)


if __name__ == "__main__":
    main()
