#!/usr/bin/env python3
"""Top-1 agreement on a folder of photos: Lens against the Pillow reference, or
one Lens engine and precision against another.

    .venv/bin/python tools/agreement.py [--model DIR] [--lens BIN] PHOTO_DIR [--limit N]
        [--against reference|ENGINE:PRECISION] [--engine ENGINE --precision PRECISION]

With `--against reference` (the default), every photo is classified by
tools/reference_predict.py's preprocessing (Pillow decode, EXIF transpose,
centre crop, BICUBIC) and onnxruntime, and by `lens predict --json` with
`--engine`/`--precision`. With `--against openvino:fp32` (say), the second
classifier is `lens predict` with that engine and precision instead, so
`--engine openvino --precision bf16 --against openvino:fp32` is the bf16
agreement figure. It prints the agreement, how many photos each side could
not classify, and the disagreements with the reference's top-1 margin (a
disagreement on a near tie is the expected kind).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import reference_predict  # noqa: E402

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def lens_answers(lens: Path, model: Path, files: list[Path], engine: str, precision: str) -> dict[str, dict]:
    """`lens predict --json` on every file: name -> {"label", "score"} or {"error"}."""
    argv = [str(lens), "predict", "--json", "--model", str(model), "--engine", engine, "--precision", precision]
    out: dict[str, dict] = {}
    for i in range(0, len(files), 500):  # bounded argv
        chunk = files[i : i + 500]
        run = subprocess.run([*argv, *map(str, chunk)], capture_output=True, text=True, cwd=ROOT)
        for line in run.stdout.splitlines():
            row = json.loads(line)
            name = Path(row["file"]).name
            out[name] = {"label": row["prediction"], "score": row["score"]} if row.get("prediction") else {"error": row.get("error")}
    return out


def reference_answers(model: Path, files: list[Path]) -> dict[str, dict]:
    """The Pillow + onnxruntime reference: name -> {"label", "score", "margin"}."""
    import onnxruntime as ort

    with open(model / "model.toml", "rb") as f:
        cfg = tomllib.load(f)
    labels = (model / cfg.get("labels", "labels.txt")).read_text().splitlines()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    out: dict[str, dict] = {}
    for path in files:
        try:
            x = reference_predict.preprocess(path, cfg)
        except Exception as e:  # noqa: BLE001 - an unreadable photo is a finding, not a crash
            out[path.name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        logits = sess.run([cfg["output"]["name"]], {cfg["input"]["name"]: x})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:2]
        out[path.name] = {"label": labels[int(top[0])], "score": float(p[top[0]]), "margin": float(p[top[0]] - p[top[1]])}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", type=Path)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "efficientnet-lite0")
    ap.add_argument("--lens", type=Path, default=ROOT / "target" / "release" / "lens")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--against", default="reference", help="reference (Pillow + onnxruntime) or ENGINE:PRECISION")
    ap.add_argument("--limit", type=int, help="the first N photos (sorted by name)")
    ap.add_argument("--json", type=Path, help="also write the figures and disagreements here")
    args = ap.parse_args()

    files = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in SUFFIXES)[: args.limit]
    if not files:
        sys.exit(f"{args.photos}: no photos")
    ours = lens_answers(args.lens, args.model, files, args.engine, args.precision)
    if args.against == "reference":
        theirs, name = reference_answers(args.model, files), "Pillow + onnxruntime reference"
    else:
        engine, _, precision = args.against.partition(":")
        theirs, name = lens_answers(args.lens, args.model, files, engine, precision or "fp32"), f"lens {args.against}"

    both = [f.name for f in files if "label" in ours.get(f.name, {}) and "label" in theirs.get(f.name, {})]
    agree = [n for n in both if ours[n]["label"] == theirs[n]["label"]]
    differ = sorted((n for n in both if n not in agree), key=lambda n: theirs[n].get("margin", theirs[n]["score"]))
    failed_ours = [f.name for f in files if "label" not in ours.get(f.name, {})]
    failed_theirs = [f.name for f in files if "label" not in theirs.get(f.name, {})]
    print(f"{len(files)} photos in {args.photos}: lens {args.engine}:{args.precision} against the {name}")
    print(f"top-1 agreement: {len(agree)}/{len(both)} = {100 * len(agree) / max(1, len(both)):.2f}%")
    print(f"not classified: lens {len(failed_ours)}, {name} {len(failed_theirs)}")
    for n in differ[:20]:
        margin = theirs[n].get("margin")
        print(f"  {n}: lens {ours[n]['label']} ({ours[n]['score']:.3f}), other {theirs[n]['label']} ({theirs[n]['score']:.3f}"
              + (f", top-2 margin {margin:.3f})" if margin is not None else ")"))
    if args.json:
        args.json.write_text(json.dumps({
            "photos": len(files), "compared": len(both), "agree": len(agree), "against": args.against,
            "engine": args.engine, "precision": args.precision,
            "disagreements": [{"file": n, "lens": ours[n], "other": theirs[n]} for n in differ],
            "not_classified": {"lens": failed_ours, "other": failed_theirs},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
