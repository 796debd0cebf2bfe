"""Compare quantizers on the same calibration / held-out photos (the table in tools/INT8.md).

Usage (in a venv with requirements.txt + requirements-quantize.txt):
  INT8_WORK=/work/int8-exp INT8_PHOTOS=/work/calib/split python tools/int8_compare.py [CONFIG...]
CONFIG: ort-minmax, ort-minmax-rr (reduce_range), ort-percentile, ort-entropy,
        nncf-first_layer_only, nncf-disable, nncf-enable (NNCF overflow fix).
INT8_PHOTOS holds calib/ (300 used), heldout_coco/ and heldout_ade20k/. Preprocessed arrays,
int8 models and results.json are written to INT8_WORK."""
import os
import json, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quantize_int8 as q

MD = Path(__file__).resolve().parent.parent / "models/efficientnet-lite0"
FP32 = MD / "model.onnx"
W = Path(os.environ.get("INT8_WORK", "/work/int8-exp"))
PH = os.environ.get("INT8_PHOTOS", "/work/calib/split")
cfg = q.load_config(MD)

def cached(name, folder, limit=None):
    f = W / f"{name}.npy"
    if f.exists():
        return np.load(f)
    photos = q.list_photos(folder, name)[:limit]
    x = q.load_batch(photos, cfg, name, progress=False)
    np.save(f, x)
    (W / f"{name}.txt").write_text("\n".join(map(str, photos)))
    return x

t = time.time()
calib = cached("calib", f"{PH}/calib", 300)
hc = cached("heldout_coco", f"{PH}/heldout_coco")
ha = cached("heldout_ade20k", f"{PH}/heldout_ade20k")
print("preprocessed", calib.shape, hc.shape, ha.shape, round(time.time() - t), "s", flush=True)
held = np.concatenate([hc, ha])
nc = len(hc)

ref_f = W / "ref_fp32_ort.npy"
if not ref_f.exists():
    np.save(ref_f, q.ort_logits(FP32, held, "input", "logits"))
ref = np.load(ref_f)
ov32 = q.ov_logits(FP32, held)
res = {"fp32_openvino_vs_ort": q.agreement(ref, ov32)}
print(res, flush=True)

configs = sys.argv[1:] or ["ort-minmax", "ort-minmax-rr", "ort-percentile", "ort-entropy",
                           "nncf-first_layer", "nncf-disable", "nncf-enable"]
for c in configs:
    out = W / f"{c}.onnx"
    t = time.time()
    if not out.exists():
        kind, method, *rest = c.split("-")
        if kind == "ort":
            q.quantize_ort(FP32, out, "input", calib_x=calib, method=method, reduce_range=bool(rest))
        else:
            q.quantize_nncf(FP32, out, "input", calib, overflow_fix=method)
    tq = round(time.time() - t, 1)
    r = {"quantize_s": tq, "bytes": out.stat().st_size}
    lo = q.ort_logits(out, held, "input", "logits")
    lv = q.ov_logits(out, held)
    for name, l in (("onnxruntime", lo), ("openvino", lv)):
        r[name] = {"all": q.agreement(ref, l), "coco": q.agreement(ref[:nc], l[:nc]),
                   "ade20k": q.agreement(ref[nc:], l[nc:])}
    r["openvino_vs_own_fp32"] = q.agreement(ov32, lv)
    res[c] = r
    print(c, json.dumps(r), flush=True)
    (W / "results.json").write_text(json.dumps(res, indent=1))
