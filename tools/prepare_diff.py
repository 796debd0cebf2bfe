#!/usr/bin/env python3
"""Lens's model input against the Pillow reference's, photo by photo.

    cargo build --release --example prepare_dump
    .venv/bin/python tools/prepare_diff.py PHOTO_DIR [PHOTO_DIR...] [--limit N]

For every JPEG/PNG in the folders it prepares the 224x224 input twice: with
`target/release/examples/prepare_dump` (Lens's `preprocess::prepare`, the
default model's centre crop) and with tools/reference_predict.py's Pillow
steps. It prints how many photos are byte-identical, the mean and largest
pixel differences, and the top-1 agreement of the default model (onnxruntime,
fp32) run on both inputs, so that preprocessing is measured apart from any
engine. Photos Lens shrinks in the DCT domain (a centre crop at least four
times the input) are counted apart: there Lens differs from Pillow by design.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import reference_predict  # noqa: E402

SUFFIXES = (".jpg", ".jpeg", ".png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", type=Path, nargs="+")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "efficientnet-lite0")
    ap.add_argument("--dump", type=Path, default=ROOT / "target" / "release" / "examples" / "prepare_dump")
    ap.add_argument("--limit", type=int, help="the first N photos of each folder (sorted by name)")
    args = ap.parse_args()

    files = [p for d in args.folders for p in sorted(q for q in d.iterdir() if q.suffix.lower() in SUFFIXES)[: args.limit]]
    if not files:
        sys.exit("no photos")
    with open(args.model / "model.toml", "rb") as f:
        cfg = tomllib.load(f)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(args.model / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    size = int(cfg["input"]["width"])

    def top2(rgb: np.ndarray) -> tuple[int, float]:
        x = reference_predict.to_tensor(rgb, cfg)
        logits = sess.run(None, {cfg["input"]["name"]: x})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        a, b = np.argsort(-p)[:2]
        return int(a), float(p[a] - p[b])

    rows = {"full": [], "dct": []}
    with tempfile.TemporaryDirectory() as out:
        for i in range(0, len(files), 500):
            subprocess.run([str(args.dump), out, *map(str, files[i : i + 500])], check=True)
        for f in files:
            ref = np.asarray(reference_predict.prepare_image(f, cfg))
            ours = np.frombuffer((Path(out) / (f.name + ".rgb")).read_bytes(), np.uint8).reshape(size, size, 3)
            diff = np.abs(ref.astype(np.int16) - ours.astype(np.int16))
            (label, margin), (mine, _) = top2(ref), top2(ours)
            # Lens's DCT rule (geometry::Plan::dct_denominator): the crop at 1/2 still >= 2x the output.
            side = int(float(cfg["preprocess"]["crop_fraction"]) * min(Image.open(f).size))
            kind = "dct" if f.suffix.lower() != ".png" and side // 2 >= 2 * size else "full"
            rows[kind].append((f.name, float(diff.mean()), int(diff.max()), label == mine, margin))
    for kind, name in (("full", "decoded at full size"), ("dct", "shrunk in the DCT domain")):
        r = rows[kind]
        if not r:
            continue
        same = sum(1 for _, m, _, _, _ in r if m == 0)
        agree = sum(1 for *_, a, _ in r if a)
        print(f"{name}: {len(r)} photos, {same} byte-identical, mean |diff| {np.mean([m for _, m, *_ in r]):.4f}, "
              f"max {max(x for _, _, x, _, _ in r)}, top-1 agreement {agree}/{len(r)} = {100 * agree / len(r):.2f}%")
        for n, m, x, _, margin in sorted((t for t in r if not t[3]), key=lambda t: -t[4])[:10]:
            print(f"  differs: {n} (mean |diff| {m:.3f}, max {x}, reference top-2 margin {margin:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
