#!/usr/bin/env python3
"""onnxruntime + Pillow reference classifier, used to cross-check the Rust pipeline.

Usage: tools/reference_predict.py MODEL_DIR IMAGE...

MODEL_DIR holds model.onnx, labels.txt and model.toml (as written by
tools/export_efficientnet_lite0.py).  For each image one JSON line is printed:

  {"file": "...", "top5": [{"index": 248, "label": "Eskimo_dog", "score": 0.61}, ...]}

score is the softmax probability (computed in float64 from the model's logits).

Preprocessing follows model.toml:
  RGB (alpha composited on white) -> EXIF orientation (ImageOps.exif_transpose)
  -> centre square of side int(crop_fraction * min(w, h)), left=(w-side+1)//2,
     top=(h-side+1)//2 -> resize to width x height (Pillow BICUBIC for "bicubic")
  -> (x - mean) / std per channel -> NCHW (or NHWC) float32.
"""

import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos3": Image.Resampling.LANCZOS,
}


def load_rgb(path):
    img = Image.open(path)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("RGB")


def prepare_image(path, cfg):
    """The model-size RGB picture, before normalisation (Pillow image)."""
    inp, pre = cfg["input"], cfg["preprocess"]
    width, height = int(inp["width"]), int(inp["height"])
    img = load_rgb(path)
    if pre["resize"] == "center-crop":
        w, h = img.size
        side = int(float(pre["crop_fraction"]) * min(w, h))
        left, top = (w - side + 1) // 2, (h - side + 1) // 2
        img = img.crop((left, top, left + side, top + side))
    elif pre["resize"] != "squash":
        raise ValueError(f"unknown resize mode {pre['resize']!r}")
    return img.resize((width, height), resample=_RESAMPLE[pre["interpolation"]])


def to_tensor(rgb, cfg):
    """An HWC RGB uint8 array (or Pillow image) as the model's input tensor."""
    inp, pre = cfg["input"], cfg["preprocess"]
    x = np.asarray(rgb, dtype=np.float32)  # HWC, RGB
    if inp["channel_order"] == "BGR":
        x = x[:, :, ::-1]
    elif inp["channel_order"] != "RGB":
        raise ValueError(f"unknown channel_order {inp['channel_order']!r}")
    x = (x - np.asarray(pre["mean"], dtype=np.float32)) / np.asarray(pre["std"], dtype=np.float32)
    if inp["layout"] == "NCHW":
        x = x.transpose(2, 0, 1)
    elif inp["layout"] != "NHWC":
        raise ValueError(f"unknown layout {inp['layout']!r}")
    return np.ascontiguousarray(x[None], dtype=np.float32)


def preprocess(path, cfg):
    return to_tensor(prepare_image(path, cfg), cfg)


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    model_dir = Path(argv[1])
    with open(model_dir / "model.toml", "rb") as f:
        cfg = tomllib.load(f)
    labels = (model_dir / cfg.get("labels", "labels.txt")).read_text(encoding="utf-8").splitlines()

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    in_name, out_name = cfg["input"]["name"], cfg["output"]["name"]
    kind = cfg["output"].get("kind", "logits")

    for path in argv[2:]:
        x = preprocess(path, cfg)
        y = sess.run([out_name], {in_name: x})[0][0].astype(np.float64)
        if kind == "logits":
            e = np.exp(y - y.max())
            probs = e / e.sum()
        else:
            probs = y
        top = np.argsort(-probs, kind="stable")[:5]
        print(json.dumps({
            "file": path,
            "top5": [{"index": int(i), "label": labels[i], "score": float(probs[i])} for i in top],
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
