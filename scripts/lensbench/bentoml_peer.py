"""A real BentoML service serving Lens's default model, as a peer for
scripts/bench-bentoml. Runs under the venv that script makes
(`.venv-bentoml`, the `bentoml` wheel with the onnxruntime, Pillow and numpy
of requirements.txt):

    LENS_MODEL_DIR=models/efficientnet-lite0 BENTO_WORKERS=N \
      .venv-bentoml/bin/bentoml serve lensbench.bentoml_peer:Lite0 --port P

`POST /predict` takes a multipart `file`, as Lens's `/predict` does, and
answers the top class and its probability. The endpoint is batchable:
BentoML's adaptive batching groups concurrent requests (up to 64) into one
call. Its latency bound is 30 s, Lens's deadline: with a tighter one BentoML
answers 503 to whatever it expects to miss it (at 100 ms it refused over
90% of this load). Each call decodes, crops and resizes each photo with
Pillow exactly as tools/reference_predict.py does, then runs ONNX Runtime
once on the batch. One ONNX Runtime session per worker, with as many
intra-op threads as cores divided by workers.
"""

import os
import sys
import tomllib
from pathlib import Path

import bentoml
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from reference_predict import preprocess  # noqa: E402

MODEL_DIR = Path(os.environ.get("LENS_MODEL_DIR", ROOT / "models" / "efficientnet-lite0"))
WORKERS = int(os.environ.get("BENTO_WORKERS", "1"))


@bentoml.service(workers=WORKERS, traffic={"concurrency": 256, "timeout": 120})
class Lite0:
    def __init__(self) -> None:
        self.cfg = tomllib.loads((MODEL_DIR / "model.toml").read_text())
        self.labels = (MODEL_DIR / "labels.txt").read_text().splitlines()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, (os.cpu_count() or 1) // WORKERS)
        self.session = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=30_000)
    def predict(self, file: list[Path]) -> list[dict]:
        x = np.concatenate([preprocess(str(p), self.cfg) for p in file])
        out = self.session.run(None, {self.input: x})[0].astype(np.float64)
        if self.cfg["output"].get("kind", "logits") == "logits":
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        best = out.argmax(axis=1)
        return [{"success": True, "prediction": self.labels[i], "score": float(row[i])} for i, row in zip(best, out)]
