#!/usr/bin/env python3
"""Write a static int8 (QDQ, per-channel weights) variant of a Lens model, verified against fp32.

Usage:
  tools/quantize_int8.py MODEL_DIR --calibration DIR --heldout DIR [options]
      Calibrate on the photos in --calibration (the first --samples of them, sorted by name),
      quantize, then measure top-1 agreement with the fp32 model on the photos in --heldout
      (which must not be calibration photos) and refuse below --min-agreement.
      --save-ranges FILE also writes the calibration result (activation ranges), so that the
      same variant can be rebuilt later without the photos.
  tools/quantize_int8.py MODEL_DIR --from-ranges FILE [--heldout DIR] [options]
      Rebuild the variant from a ranges file written by --save-ranges: no photos needed, and
      the output is byte-for-byte deterministic for a given fp32 model and onnxruntime version.

Writes MODEL_DIR/model.int8.onnx (--out) and MODEL_DIR/model.int8.json (--report), each to a
temporary file in the same directory that is renamed into place only when every check passed.
Exit status: 0 written, 1 refused (no photos, unreadable photos, agreement too low, a model the
quantizer refuses, a ranges file that does not fit the model), 2 usage.

The quantizer is onnxruntime.quantization.quantize_static: QDQ format, uint8 activations
(asymmetric), int8 weights (symmetric, per output channel), MinMax calibration, no reduce_range.
tools/INT8.md says why (measured against NNCF and the other calibration methods).

Preprocessing follows model.toml exactly as tools/reference_predict.py does (Pillow, EXIF
orientation, alpha on white, bicubic), with the centre crop of int(crop_fraction * short side)
placed at offset (side - crop + 1) // 2 (the crop the model's training used).
"""

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The reference's own preprocessing: calibration sees exactly what the checks see.
from reference_predict import preprocess  # noqa: E402

PHOTO_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
RANGES_FORMAT = "lens-int8-ranges/1"


class Refused(Exception):
    """A reason not to write the variant; printed as 'refused: ...' with exit status 1."""


# ---------------------------------------------------------------- preprocessing

def load_config(model_dir):
    with open(model_dir / "model.toml", "rb") as f:
        return tomllib.load(f)


def list_photos(folder, what):
    folder = Path(folder)
    if not folder.is_dir():
        raise Refused(f"{what} folder {folder} does not exist or is not a folder")
    photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_EXTS and p.is_file())
    if not photos:
        raise Refused(f"no photos in {what} folder {folder} (looked for {', '.join(PHOTO_EXTS)})")
    return photos


def show_progress():
    """On a terminal, or when `lens quantize` reads the lines to draw its own bar."""
    return sys.stderr.isatty() or os.environ.get("LENS_PROGRESS") == "1"


def load_batch(paths, cfg, what, progress=True):
    """Preprocess every photo; refuse with the list of unreadable ones if any."""
    xs, bad = [], []
    for i, p in enumerate(paths):
        try:
            xs.append(preprocess(p, cfg))
        except Exception as e:  # Pillow raises many kinds for bad files
            bad.append(f"{p}: {type(e).__name__}: {e}")
        if progress and show_progress():
            print(f"\r{what}: {i + 1}/{len(paths)} photos", end="", file=sys.stderr, flush=True)
    if progress and show_progress():
        print(file=sys.stderr)
    if bad:
        shown = "\n  ".join(bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise Refused(f"{len(bad)} of {len(paths)} {what} photos could not be read:\n  {shown}{more}")
    return np.concatenate(xs)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- inference

def ort_session(model, threads=1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def ort_logits(model, x, in_name, out_name, batch=8, threads=1):
    sess = ort_session(model, threads)
    return np.concatenate([sess.run([out_name], {in_name: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def ov_compiled(model, batch, threads=1):
    import openvino as ov
    core = ov.Core()
    m = core.read_model(str(model))
    shape = list(m.input(0).get_partial_shape())
    shape[0] = batch
    m.reshape({m.input(0).get_any_name(): ov.PartialShape(shape)})
    return core.compile_model(m, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32",  # int8 where the model is QDQ, f32 elsewhere; never bf16
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    })


def ov_logits(model, x, batch=8, threads=1):
    compiled = ov_compiled(model, batch, threads)
    req = compiled.create_infer_request()
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        n = len(chunk)
        if n < batch:  # static batch: pad, then drop the padding
            chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], chunk.dtype)])
        out.append(np.array(req.infer({0: chunk})[compiled.output(0)])[:n])
    return np.concatenate(out)


def bench(engine, model, x, in_name, out_name, batch=8, reps=7, iters=20, threads=1):
    """Median over reps of the mean ms per image over iters batches of `batch` images."""
    xb = np.ascontiguousarray(x[:batch])
    if engine == "onnxruntime":
        sess = ort_session(model, threads)
        run = lambda: sess.run([out_name], {in_name: xb})  # noqa: E731
    else:
        compiled = ov_compiled(model, batch, threads)
        req = compiled.create_infer_request()
        run = lambda: req.infer({0: xb})  # noqa: E731
    for _ in range(5):
        run()
    per_image = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(iters):
            run()
        per_image.append((time.perf_counter() - t) * 1000 / (iters * batch))
    return {"ms_per_image_median": round(statistics.median(per_image), 4),
            "ms_per_image_all": [round(v, 4) for v in per_image]}


def agreement(ref_logits, logits, min_margin=0.0):
    """Top-1 agreement; with min_margin > 0 also on the photos whose fp32 softmax top-1/top-2
    margin is at least min_margin (photos an ImageNet classifier is not sure about flip easily)."""
    a, b = ref_logits.argmax(1), logits.argmax(1)
    same = a == b
    r = {"photos": int(len(a)), "agree": int(same.sum()), "top1_agreement": round(float(same.mean()), 5)}
    if min_margin > 0:
        p = np.exp(ref_logits - ref_logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        ps = np.sort(p, 1)
        sure = (ps[:, -1] - ps[:, -2]) >= min_margin
        r["gate_margin"] = min_margin
        r["gate_photos"] = int(sure.sum())
        r["gate_agreement"] = round(float(same[sure].mean()), 5) if sure.any() else 0.0
    return r


# ---------------------------------------------------------------- quantization

class _Reader:
    def __init__(self, x, in_name):
        self.x, self.in_name, self.i = x, in_name, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.in_name: self.x[self.i - 1:self.i]}

    def rewind(self):
        self.i = 0


def quantize_ort(fp32, out, in_name, calib_x=None, cache=None, method="minmax", reduce_range=False):
    """onnxruntime quantize_static, QDQ, U8 activations / S8 per-channel weights.
    With cache set and existing, no photos are used (the ranges come from the cache)."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    # Its advice to run its pre-processing step is for models with shape
    # inference gaps; this graph has none, and the advice would read as a fault.
    logging.getLogger().setLevel(logging.ERROR)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    extra = {}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    quantize_static(
        str(fp32), str(out),
        calibration_data_reader=_Reader(calib_x, in_name) if calib_x is not None else None,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=methods[method],
        extra_options=extra,
        calibration_cache_path=str(cache) if cache is not None else None,
    )


def quantize_nncf(fp32, out, in_name, calib_x, overflow_fix="first_layer_only", preset="performance"):
    """NNCF's ONNX backend (experiments only: not in the project's venv)."""
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    model = onnx.load(str(fp32))
    ds = nncf.Dataset([calib_x[i:i + 1] for i in range(len(calib_x))], lambda x: {in_name: x})
    q = nncf.quantize(
        model, ds, subset_size=len(calib_x),
        preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix)),
    )
    onnx.save(q, str(out))


def int8_summary(path):
    import onnx
    m = onnx.load(str(path))
    ops = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"QuantizeLinear": ops.get("QuantizeLinear", 0), "DequantizeLinear": ops.get("DequantizeLinear", 0)}


# ---------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("model_dir", type=Path)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--calibration", type=Path, help="folder of calibration photos")
    src.add_argument("--from-ranges", type=Path, help="ranges file written by --save-ranges")
    ap.add_argument("--heldout", type=Path, help="folder of held-out photos (required with --calibration)")
    ap.add_argument("--samples", type=int, default=300, help="calibration photos to use (default 300)")
    ap.add_argument("--min-agreement", type=float, default=0.97)
    ap.add_argument("--gate-margin", type=float, default=0.0,
                    help="apply --min-agreement only to held-out photos whose fp32 top-1/top-2 softmax "
                         "margin is at least this (default 0: all photos); both figures are reported")
    ap.add_argument("--out", type=Path, help="default MODEL_DIR/model.int8.onnx")
    ap.add_argument("--report", type=Path, help="default MODEL_DIR/model.int8.json")
    ap.add_argument("--save-ranges", type=Path, help="also write the calibration result here")
    ap.add_argument("--calibrate-method", choices=["minmax", "percentile", "entropy"], default="minmax")
    ap.add_argument("--reduce-range", action="store_true", help="7-bit weights (CPUs without VNNI)")
    ap.add_argument("--bench", choices=["none", "onnxruntime", "openvino", "both"], default="both",
                    help="ms/image at batch 8 for fp32 and int8 (default both engines)")
    ap.add_argument("--bench-reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="engine threads for agreement and bench")
    a = ap.parse_args(argv)
    if a.from_ranges is not None and a.save_ranges is not None:
        ap.error("--save-ranges needs --calibration")
    if a.calibration is not None and a.heldout is None:
        ap.error("--calibration needs --heldout (agreement is measured on photos not used to calibrate)")
    try:
        return run(a)
    except Refused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1


def run(a):
    import onnx
    import onnxruntime

    model_dir = a.model_dir
    cfg = load_config(model_dir)
    fp32 = model_dir / cfg.get("onnx", "model.onnx")
    if not fp32.is_file():
        raise Refused(f"no fp32 model at {fp32}")
    in_name, out_name = cfg["input"]["name"], cfg["output"]["name"]
    out = a.out or model_dir / "model.int8.onnx"
    report_path = a.report or model_dir / "model.int8.json"
    fp32_sha = sha256_file(fp32)
    report = {"model": str(fp32), "model_sha256": fp32_sha, "quantizer": {
        "name": "onnxruntime.quantization.quantize_static", "onnxruntime": onnxruntime.__version__,
        "format": "QDQ", "activations": "uint8 asymmetric, per tensor",
        "weights": "int8 symmetric, per channel", "reduce_range": a.reduce_range}}

    ranges_doc = None
    calib_x = None
    if a.from_ranges is not None:
        try:
            ranges_doc = json.loads(a.from_ranges.read_text())
        except (OSError, ValueError) as e:
            raise Refused(f"cannot read ranges file {a.from_ranges}: {e}")
        if ranges_doc.get("format") != RANGES_FORMAT:
            raise Refused(f"{a.from_ranges} is not a {RANGES_FORMAT} file")
        if ranges_doc.get("model_sha256") != fp32_sha:
            raise Refused(f"{a.from_ranges} was made for a different fp32 model "
                          f"(sha256 {ranges_doc.get('model_sha256')}, this one {fp32_sha}); "
                          "re-export the model or re-calibrate")
        a.calibrate_method = ranges_doc["calibrate_method"]
        a.reduce_range = bool(ranges_doc["reduce_range"])
        report["quantizer"]["reduce_range"] = a.reduce_range
        report["calibration"] = {"from_ranges": str(a.from_ranges), **ranges_doc["calibration"]}
    else:
        photos = list_photos(a.calibration, "calibration")[:max(1, a.samples)]
        calib_x = load_batch(photos, cfg, "calibration")
        report["calibration"] = {"folder": str(a.calibration), "photos": len(photos)}
    report["calibration"]["method"] = a.calibrate_method

    heldout_x = None
    if a.heldout is not None:
        held = list_photos(a.heldout, "held-out")
        if a.calibration is not None:
            calib_set = {sha256_file(p) for p in list_photos(a.calibration, "calibration")[:max(1, a.samples)]}
            overlap = [p for p in held if sha256_file(p) in calib_set]
            if overlap:
                raise Refused(f"{len(overlap)} held-out photos are also calibration photos "
                              f"(e.g. {overlap[0]}); agreement must be measured on other photos")
        heldout_x = load_batch(held, cfg, "held-out")

    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=model_dir) as tmp:
        tmp = Path(tmp)
        cache = tmp / "ranges.json"
        if ranges_doc is not None:
            cache.write_text(json.dumps(ranges_doc["tensors"]))
        tmp_out = tmp / "model.int8.onnx"
        try:
            quantize_ort(fp32, tmp_out, in_name, calib_x=calib_x, cache=cache,
                         method=a.calibrate_method, reduce_range=a.reduce_range)
            onnx.checker.check_model(str(tmp_out))
        except Refused:
            raise
        except Exception as e:
            raise Refused(f"the quantizer refused {fp32}: {type(e).__name__}: {e}")
        report["int8"] = {"file": out.name, "sha256": sha256_file(tmp_out),
                          "bytes": tmp_out.stat().st_size, **int8_summary(tmp_out)}

        if heldout_x is not None:
            ref = ort_logits(fp32, heldout_x, in_name, out_name, threads=a.threads)
            ag = {"onnxruntime": agreement(ref, ort_logits(tmp_out, heldout_x, in_name, out_name,
                                                           threads=a.threads), a.gate_margin)}
            if a.bench in ("openvino", "both"):
                ag["openvino"] = agreement(ref, ov_logits(tmp_out, heldout_x, threads=a.threads), a.gate_margin)
            report["heldout"] = {"folder": str(a.heldout), "photos": int(len(heldout_x)),
                                 "reference": "fp32 on onnxruntime", "agreement": ag}
            key = "gate_agreement" if a.gate_margin > 0 else "top1_agreement"
            worst = min(v[key] for v in ag.values())
            report["heldout"]["min_agreement"] = a.min_agreement
            if worst < a.min_agreement:
                raise Refused(f"int8 top-1 agreement with fp32 on {len(heldout_x)} held-out photos"
                              f"{f' (those with fp32 margin >= {a.gate_margin})' if a.gate_margin > 0 else ''} is "
                              f"{worst:.4f}, below --min-agreement {a.min_agreement} "
                              f"({json.dumps(ag)}); nothing written")
        elif ranges_doc is not None and "heldout" in ranges_doc:
            report["heldout"] = {"measured_when_calibrated": ranges_doc["heldout"]}

        if a.bench != "none":
            x = heldout_x if heldout_x is not None else calib_x
            if x is None:  # from ranges without photos: timing needs only some input
                x = np.random.default_rng(0).standard_normal((8, 3, 224, 224), dtype=np.float32)
            engines = ["onnxruntime", "openvino"] if a.bench == "both" else [a.bench]
            report["speed"] = {"batch": 8, "threads": a.threads, "reps": a.bench_reps}
            for eng in engines:
                r32 = bench(eng, fp32, x, in_name, out_name, reps=a.bench_reps, threads=a.threads)
                r8 = bench(eng, tmp_out, x, in_name, out_name, reps=a.bench_reps, threads=a.threads)
                report["speed"][eng] = {"fp32": r32, "int8": r8, "speedup": round(
                    r32["ms_per_image_median"] / r8["ms_per_image_median"], 3)}

        if a.save_ranges is not None:
            doc = {"format": RANGES_FORMAT, "model": cfg.get("name"), "model_sha256": fp32_sha,
                   "made_by": "tools/quantize_int8.py --save-ranges", "onnxruntime": onnxruntime.__version__,
                   "calibrate_method": a.calibrate_method, "reduce_range": a.reduce_range,
                   "calibration": {"photos": report["calibration"]["photos"],
                                   "photo_sha256": [sha256_file(p) for p in photos]},
                   "tensors": json.loads(cache.read_text())}
            if "heldout" in report:
                doc["heldout"] = {"photos": report["heldout"]["photos"],
                                  "agreement": report["heldout"]["agreement"]}
            tmp_ranges = tmp / "save-ranges.json"
            tmp_ranges.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        tmp_report = tmp / "report.json"
        tmp_report.write_text(json.dumps(report, indent=2) + "\n")
        # everything passed: move into place (same filesystem for the model files)
        os.replace(tmp_out, out)
        os.replace(tmp_report, report_path)
        if a.save_ranges is not None:
            a.save_ranges.parent.mkdir(parents=True, exist_ok=True)
            tmp2 = a.save_ranges.with_name(f".{a.save_ranges.name}.tmp")
            tmp2.write_bytes(tmp_ranges.read_bytes())
            os.replace(tmp2, a.save_ranges)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
