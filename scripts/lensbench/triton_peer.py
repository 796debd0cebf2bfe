"""A real Triton Inference Server serving Lens's default model, as a peer for
scripts/bench-protocols. Runs under the venv that script makes
(`.venv-triton`, from Debian's /usr/bin/python3: the Python backend's stub
links Debian's libpython3.11) with the `nvidia-pytriton` wheel, which ships
the `tritonserver` binary and its Python backend; it runs on CPU.

    triton_peer.py MODEL_DIR HTTP_PORT GRPC_PORT

Two models, each with Triton's dynamic batching (up to 64, 2 ms):
- `efficientnet-lite0`: a BYTES `image` (an encoded photo) decoded, cropped and
  resized with Pillow exactly as tools/reference_predict.py does, then ONNX
  Runtime; output `logits` (the probabilities).
- `efficientnet-lite0-tensor`: an FP32 `input` [3, 224, 224] straight to
  ONNX Runtime.

One ONNX Runtime session with as many intra-op threads as cores, as Lens's
`--sessions 1` default on two cores would have. Prints "triton ready" once both
models answer.
"""

import io
import os
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from reference_predict import preprocess  # noqa: E402

model_dir, http_port, grpc_port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cfg = tomllib.loads((model_dir / "model.toml").read_text())
options = ort.SessionOptions()
options.intra_op_num_threads = os.cpu_count() or 1
session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def run(x):
    out = session.run(None, {input_name: x})[0]
    # model.toml says whether the model outputs logits; Lens answers probabilities.
    if cfg["output"].get("kind", "logits") == "logits":
        out = softmax(out)
    return out.astype(np.float32)


@batch
def images(image):
    x = np.concatenate([preprocess(io.BytesIO(bytes(b[0])), cfg) for b in image])
    return {"logits": run(x)}


@batch
def tensors(input):
    return {"logits": run(np.ascontiguousarray(input, dtype=np.float32))}


batching = ModelConfig(max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=2000))
config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=0, allow_metrics=False, log_verbose=0)
with Triton(config=config) as triton:
    triton.bind(
        model_name="efficientnet-lite0",
        infer_func=images,
        inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
        outputs=[Tensor(name="logits", dtype=np.float32, shape=(1000,))],
        config=batching,
    )
    triton.bind(
        model_name="efficientnet-lite0-tensor",
        infer_func=tensors,
        inputs=[Tensor(name="input", dtype=np.float32, shape=(3, 224, 224))],
        outputs=[Tensor(name="logits", dtype=np.float32, shape=(1000,))],
        config=batching,
    )
    print("triton ready", flush=True)
    triton.serve()
