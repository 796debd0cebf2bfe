#!/usr/bin/env python3
"""Phone-size photos, and how closely Lens's answers on them follow the Pillow reference.

    .venv/bin/python tools/phone_photos.py make [--per-source N] [--seed S] OUT_DIR [SOURCE...]
    .venv/bin/python tools/phone_photos.py measure [--lens target/release/lens] MODEL_DIR DIR [SOURCE...]

`make` turns real photos (default: the four test photos in tests/fixtures) into
12 MP phone-like JPEGs: a random crop of 70-100% of the frame, upscaled to
4032x3024 (landscape) with Pillow's LANCZOS, sensor-like noise (shot noise that
grows with brightness, read noise, a little chroma noise, all at the sensor's
resolution and then slightly blurred as demosaicing does), saved at quality
88-95 with 4:2:0 chroma, and stored rotated with an EXIF orientation tag (1, 3,
6 or 8) so that the upright picture is the intended one. manifest.json records
each file's source and orientation.

`measure` classifies every JPEG in DIR four ways and prints agreement figures:
  - reference: tools/reference_predict.py (Pillow full-size decode, EXIF
    transpose, centre crop, BICUBIC; onnxruntime);
  - lens: `lens predict --json` on the same files (what the server does);
  - draft@1x and draft@2x: Lens's DCT-scaling rule simulated in Pillow, for the
    factor Pillow's `draft` rule picks (the scaled centre crop stays at least the
    model's input size, "1x") and for the stricter rule Lens uses (at least twice
    the input size, "2x"): `Image.draft` decodes at 1/2, 1/4 or 1/8 with the same
    libjpeg-turbo scaled IDCT, then the crop box is divided by the factor and
    passed to `resize(box=...)` with fractional edges, as Lens does.
For each it reports top-1 agreement with the reference, the mean absolute
difference of the 224x224 model input against the reference (the simulated
rules only), and accuracy against each source photo's reference label (the
reference's top-1 on the unmodified source), so "no lower than the
reference's accuracy" can be checked without ground-truth labels.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageFilter, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import reference_predict  # noqa: E402

FIXTURE_PHOTOS = ["dog.jpeg", "grace_hopper.jpg", "coffee.png", "chelsea.png"]
PHONE = (4032, 3024)
# EXIF orientation -> the transpose that turns the upright picture into the stored one
# (the inverse of what ImageOps.exif_transpose applies).
STORE = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def sensor_noise(img: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """Shot noise (variance proportional to signal) plus read noise and some chroma noise."""
    x = np.asarray(img, dtype=np.float32)
    shot = rng.standard_normal(x.shape, dtype=np.float32) * np.sqrt(np.maximum(x, 1.0)) * 0.6 * strength
    luma = rng.standard_normal(x.shape[:2] + (1,), dtype=np.float32) * 2.0 * strength
    chroma = rng.standard_normal(x.shape, dtype=np.float32) * 1.0 * strength
    noisy = Image.fromarray(np.clip(x + shot + luma + chroma, 0, 255).round().astype(np.uint8))
    return noisy.filter(ImageFilter.GaussianBlur(0.6))  # demosaicing and the lens soften the noise


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Lens test phone"  # Make
    return exif.tobytes()


def make(args: argparse.Namespace) -> int:
    sources = [Path(s) for s in args.sources] or [ROOT / "tests/fixtures" / n for n in FIXTURE_PHOTOS]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    manifest = []
    for source in sources:
        with Image.open(source) as im:
            upright = ImageOps.exif_transpose(im).convert("RGB")
        for k in range(args.per_source):
            w, h = upright.size
            frac = rng.uniform(0.7, 1.0)
            # A landscape frame of the phone's aspect ratio, or a portrait one for portrait sources.
            aspect = PHONE[0] / PHONE[1] if w >= h else PHONE[1] / PHONE[0]
            cw = min(w, int(h * frac * aspect))
            ch = min(h, int(cw / aspect))
            x0 = int(rng.integers(0, w - cw + 1))
            y0 = int(rng.integers(0, h - ch + 1))
            size = PHONE if w >= h else PHONE[::-1]
            big = upright.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.Resampling.LANCZOS)
            big = sensor_noise(big, rng, strength=float(rng.uniform(0.5, 1.5)))
            orientation = [1, 3, 6, 8][len(manifest) % 4]
            stored = big.transpose(STORE[orientation]) if STORE[orientation] is not None else big
            name = f"{source.stem}_{k:02d}_o{orientation}.jpg"
            quality = int(rng.integers(88, 96))
            stored.save(out / name, quality=quality, subsampling="4:2:0", exif=exif_with_orientation(orientation))
            manifest.append({"file": name, "source": source.name, "orientation": orientation, "quality": quality})
            print(name, flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return 0


def dct_scaled_input(path: Path, cfg: dict, oversampling: float) -> np.ndarray:
    """Lens's geometry with DCT scaling, done in Pillow: the largest 1/d (d in 8, 4, 2) that
    leaves the centre crop at least `oversampling` times the model input, then a fractional
    crop box and BICUBIC."""
    inp, pre = cfg["input"], cfg["preprocess"]
    out_w, out_h = int(inp["width"]), int(inp["height"])
    with Image.open(path) as im:
        orientation = im.getexif().get(0x0112, 1)
        stored_w, stored_h = im.size
        swap = orientation in (5, 6, 7, 8)
        up_w, up_h = (stored_h, stored_w) if swap else (stored_w, stored_h)
        side = int(float(pre["crop_fraction"]) * min(up_w, up_h))
        d = dct_denominator(path, cfg, oversampling)
        if d > 1:
            # draft picks the largest 1/d that keeps the image at least this size.
            im.draft("RGB", (stored_w // d, stored_h // d))
            assert im.size == (-(-stored_w // d), -(-stored_h // d)), (path, im.size, d)
        img = ImageOps.exif_transpose(im).convert("RGB")
    scale = 1 / d
    left, top = (up_w - side) // 2, (up_h - side) // 2
    box = (left * scale, top * scale, (left + side) * scale, (top + side) * scale)
    return np.asarray(img.resize((out_w, out_h), Image.Resampling.BICUBIC, box=box))


def dct_denominator(path: Path, cfg: dict, oversampling: float) -> int:
    """The largest 1/d (d in 8, 4, 2) that leaves the centre crop at least `oversampling` times
    the model input on both axes; 1 for files that are not JPEG."""
    with Image.open(path) as im:
        if im.format != "JPEG":
            return 1
        w, h = im.size
    side = int(float(cfg["preprocess"]["crop_fraction"]) * min(w, h))
    out = max(int(cfg["input"]["width"]), int(cfg["input"]["height"]))
    return next((d for d in (8, 4, 2) if side // d >= oversampling * out), 1)


def normalise(x: np.ndarray, cfg: dict) -> np.ndarray:
    pre = cfg["preprocess"]
    x = (x.astype(np.float32) - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None] if cfg["input"]["layout"] == "NCHW" else x[None])


def reference_input(path: Path, cfg: dict) -> np.ndarray:
    """The reference's 224x224 RGB8 picture (reference_predict.preprocess before normalising)."""
    img = reference_predict.load_rgb(path)
    w, h = img.size
    side = int(float(cfg["preprocess"]["crop_fraction"]) * min(w, h))
    left, top = (w - side) // 2, (h - side) // 2
    size = (int(cfg["input"]["width"]), int(cfg["input"]["height"]))
    return np.asarray(img.crop((left, top, left + side, top + side)).resize(size, Image.Resampling.BICUBIC))


def lens_top1(lens: Path, model_dir: Path, files: list[Path]) -> dict[str, str]:
    out = subprocess.run([str(lens), "predict", "--json", "--model", str(model_dir), *map(str, files)],
                         capture_output=True, text=True)
    answers = {}
    for line in out.stdout.splitlines():
        row = json.loads(line)
        answers[Path(row["file"]).name] = row.get("prediction") or f"error: {row.get('error')}"
    return answers


def measure(args: argparse.Namespace) -> int:
    model_dir, folder = Path(args.model_dir), Path(args.dir)
    with open(model_dir / "model.toml", "rb") as f:
        cfg = tomllib.load(f)
    labels = (model_dir / cfg.get("labels", "labels.txt")).read_text().splitlines()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])

    def top1(x: np.ndarray) -> str:
        logits = sess.run([cfg["output"]["name"]], {cfg["input"]["name"]: normalise(x, cfg)})[0][0]
        return labels[int(np.argmax(logits))]

    listed = folder / "manifest.json"
    listed = json.loads(listed.read_text()) if listed.exists() else None
    # phone_photos.py make writes a list of files; other folders (such as the distinct photos) are
    # measured without source labels.
    manifest = {m["file"]: m for m in listed} if isinstance(listed, list) else {}
    files = sorted(p for p in folder.iterdir() if p.name in manifest or (not manifest and p.suffix.lower() in (".jpg", ".jpeg")))
    files = files[: args.limit] if args.limit else files
    truth = {}
    for src in {m["source"] for m in manifest.values()}:
        candidates = [ROOT / "tests/fixtures" / src, *map(Path, args.sources)]
        path = next((p for p in candidates if p.name == src and p.exists()), None)
        truth[src] = top1(reference_input(path, cfg)) if path else None

    lens = lens_top1(Path(args.lens), model_dir, files) if args.lens else {}
    rules = {f"draft@{m:g}x": m for m in args.factors}
    rows = {"reference": [], **({"lens": []} if lens else {}), **{rule: [] for rule in rules}}
    diffs = {rule: [] for rule in rules}
    for path in files:
        ref_x = reference_input(path, cfg)
        ref = top1(ref_x)
        rows["reference"].append((path.name, ref, ref))
        if lens:
            rows["lens"].append((path.name, lens.get(path.name, "missing"), ref))
        for rule, m in rules.items():
            x = dct_scaled_input(path, cfg, m)
            diffs[rule].append(float(np.abs(x.astype(np.int16) - ref_x.astype(np.int16)).mean()))
            rows[rule].append((path.name, top1(x), ref))
        src = manifest[path.name]["source"] if manifest else None
        print(f"{path.name}: reference {ref}, lens {lens.get(path.name)}, truth {truth.get(src)}", flush=True)

    print(f"\n{len(files)} photos")
    for rule, results in rows.items():
        agree = sum(ours == ref for _, ours, ref in results)
        line = f"{rule:>10}: top-1 agreement {agree}/{len(results)} ({100 * agree / len(results):.1f}%)"
        if manifest:
            correct = sum(ours == truth[manifest[name]["source"]] for name, ours, _ in results)
            line += f", source-label accuracy {correct}/{len(results)}"
        if rule in diffs:
            scaled = [diff for diff, path in zip(diffs[rule], files) if dct_denominator(path, cfg, rules[rule]) > 1]
            line += f", mean |diff| {np.mean(diffs[rule]):.2f} (max {np.max(diffs[rule]):.2f})"
            line += f"; {len(scaled)} DCT-scaled" + (f", their mean |diff| {np.mean(scaled):.2f}" if scaled else "")
        print(line)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make", help="write phone-size JPEGs and manifest.json into OUT_DIR")
    p.add_argument("out")
    p.add_argument("sources", nargs="*", help="photos to start from (default: the four test photos)")
    p.add_argument("--per-source", type=int, default=8)
    p.add_argument("--seed", type=int, default=11)
    p.set_defaults(run=make)
    p = sub.add_parser("measure", help="top-1 agreement of Lens and DCT-scaling rules with the reference")
    p.add_argument("model_dir")
    p.add_argument("dir")
    p.add_argument("sources", nargs="*", help="the source photos, if not the test photos")
    p.add_argument("--lens", default=str(ROOT / "target/release/lens"), help="'' to skip Lens itself")
    p.add_argument("--factors", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 2.0],
                   help="DCT-scaling rules to simulate: minimum oversampling of the scaled crop (default 1,2)")
    p.add_argument("--limit", type=int, help="only the first N photos")
    p.set_defaults(run=measure)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
