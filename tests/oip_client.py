"""Lens driven by the Open Inference Protocol's standard Python client
(tritonclient[http]), as a user would call it. tests/oip.rs starts a real
`lens serve` and runs one scenario of this script against it:

    oip_client.py protocol   URL MODEL FIXTURES MODEL_DIR
    oip_client.py repository URL MODEL FIXTURES REPO

Every check raises on failure; the script prints "ok <scenario>" at the end.
"""

import base64
import os
import shutil
import sys
import threading
import time

import numpy as np
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

URL, MODEL, FIXTURES = sys.argv[2].removeprefix("http://"), sys.argv[3], sys.argv[4]
DOG, ESPRESSO = 248, 967


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def client():
    return httpclient.InferenceServerClient(url=URL, network_timeout=120.0)


def image_input(photos, binary):
    """A BYTES input of encoded image files: raw bytes in binary data,
    base64 strings in JSON (JSON cannot carry raw bytes)."""
    if binary:
        data = np.array([fixture(p) for p in photos], dtype=np.object_)
    else:
        data = np.array([base64.b64encode(fixture(p)) for p in photos], dtype=np.object_)
    i = httpclient.InferInput("image", [len(photos)], "BYTES")
    i.set_data_from_numpy(data, binary_data=binary)
    return i


def tensor_of(photo, model_dir):
    """The FP32 NCHW tensor lite0 takes, prepared here as model.toml says:
    centre crop of 0.875 of the short side, bicubic to 224, (x - 127) / 128."""
    img = Image.open(os.path.join(FIXTURES, photo)).convert("RGB")
    w, h = img.size
    side = int(0.875 * min(w, h))
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((224, 224), Image.BICUBIC)
    x = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)[None].copy()


def classes(result, name="logits"):
    """Classification strings "score:index:label" as (score, index, label)."""
    out = []
    for s in result.as_numpy(name).reshape(-1):
        s = s.decode() if isinstance(s, bytes) else s
        score, index, label = s.split(":", 2)
        out.append((float(score), int(index), label))
    return out


def protocol(model_dir):
    c = client()
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    for ext in ["binary_tensor_data", "classification", "statistics", "model_repository", "model_configuration"]:
        assert ext in meta["extensions"], meta
    assert c.is_model_ready(MODEL) and c.is_model_ready(MODEL, "1")
    assert not c.is_model_ready(MODEL, "99"), "only the served version is ready"
    md = c.get_model_metadata(MODEL)
    assert md["versions"] == ["1"] and md["inputs"][0]["shape"] == [-1, 3, 224, 224], md
    cfg = c.get_model_config(MODEL)
    assert cfg["max_batch_size"] >= 8 and cfg["input"][0]["dims"] == [3, 224, 224], cfg
    assert cfg["output"][0]["dims"] == [1000] and cfg["instance_group"][0]["count"] >= 1, cfg
    labels = open(os.path.join(model_dir, "labels.txt")).read().split()

    before = c.get_inference_statistics(MODEL)["model_stats"][0]["inference_stats"]

    # BYTES in binary, FP32 probabilities out in binary.
    r = c.infer(MODEL, [image_input(["dog.jpeg", "coffee.png"], binary=True)],
                outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)])
    probs = r.as_numpy("logits")
    assert probs.shape == (2, 1000) and probs.dtype == np.float32, probs.shape
    assert list(probs.argmax(axis=1)) == [DOG, ESPRESSO], probs.argmax(axis=1)
    assert abs(float(probs[0].sum()) - 1.0) < 1e-3
    assert r.get_response()["model_version"] == "1"
    assert r.get_output("logits")["parameters"]["binary_data_size"] == 2 * 1000 * 4

    # BYTES in JSON (base64 strings), FP32 out in JSON: the same answer.
    rj = c.infer(MODEL, [image_input(["dog.jpeg", "coffee.png"], binary=False)],
                 outputs=[httpclient.InferRequestedOutput("logits", binary_data=False)])
    assert "data" in rj.get_output("logits")
    assert np.allclose(rj.as_numpy("logits").astype(np.float32), probs, atol=1e-6)

    # No outputs named: the client asks for every output in binary.
    assert np.allclose(c.infer(MODEL, [image_input(["dog.jpeg"], True)]).as_numpy("logits")[0], probs[0], atol=1e-6)

    # Classification, binary and JSON.
    for binary in (True, False):
        rc = c.infer(MODEL, [image_input(["dog.jpeg", "coffee.png"], binary=True)],
                     outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)])
        top = classes(rc)
        assert rc.as_numpy("logits").shape == (2, 3)
        assert (top[0][1], top[0][2]) == (DOG, labels[DOG]) and top[3][1] == ESPRESSO, top
        assert top[0][0] >= top[1][0] >= top[2][0] and abs(top[0][0] - probs[0][DOG]) < 1e-4

    # FP32 tensor, binary in and out, and JSON in: the photo's class.
    x = tensor_of("dog.jpeg", model_dir)
    for binary in (True, False):
        t = httpclient.InferInput("input", list(x.shape), "FP32")
        t.set_data_from_numpy(x, binary_data=binary)
        rt = c.infer(MODEL, [t], outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)])
        p = rt.as_numpy("logits")
        assert p.shape == (1, 1000) and int(p.argmax()) == DOG, int(p.argmax())

    # Errors arrive as the client's exception, with the server's message.
    bad = httpclient.InferInput("input", [1, 3, 2, 2], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 2, 2), np.float32))
    try:
        c.infer(MODEL, [bad])
        raise AssertionError("a wrong shape was accepted")
    except InferenceServerException as e:
        assert e.status() == "400" and "shape" in e.message(), (e.status(), e.message())
    try:
        c.infer("nope", [image_input(["dog.jpeg"], True)])
        raise AssertionError("an unknown model answered")
    except InferenceServerException as e:
        assert e.status() == "404" and "nope" in e.message()

    # Statistics grew by what was asked above.
    stats = c.get_inference_statistics(MODEL)["model_stats"][0]
    after = stats["inference_stats"]
    grew = after["success"]["count"] - before["success"]["count"]
    assert grew >= 2 + 2 + 1 + 4 + 2, grew
    assert after["fail"]["count"] > before["fail"]["count"], "the bad shape counts as a failure"
    for stage in ["success", "queue", "compute_input", "compute_infer", "compute_output"]:
        assert after[stage]["ns"] > before[stage]["ns"], stage
    assert after["compute_infer"]["count"] > before["compute_infer"]["count"]
    assert stats["version"] == "1" and stats["last_inference"] > 0
    c.close()


def infer_version(c, photo="dog.jpeg"):
    r = c.infer(MODEL, [image_input([photo], True)],
                outputs=[httpclient.InferRequestedOutput("logits", class_count=1)])
    assert classes(r)[0][1] == DOG
    return r.get_response()["model_version"]


def copy_version(repo, src, dst):
    """A new version appears at once: copied beside, then renamed in."""
    tmp = os.path.join(repo, MODEL, f".incoming-{dst}")
    shutil.copytree(os.path.join(repo, MODEL, src), tmp)
    os.rename(tmp, os.path.join(repo, MODEL, dst))


def wait_for(what, check, secs=60):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def served_version(c):
    return c.get_model_metadata(MODEL)["versions"][0]


def repository(repo):
    c = client()
    index = c.get_model_repository_index()
    assert {"name": MODEL, "version": "1", "state": "READY", "reason": ""} in index, index

    # Unload, then load again.
    c.unload_model(MODEL)
    assert not c.is_model_ready(MODEL)
    try:
        infer_version(c)
        raise AssertionError("an unloaded model answered")
    except InferenceServerException as e:
        assert e.status() == "404", e.status()
    assert any(e["name"] == MODEL and e["state"] == "UNAVAILABLE" for e in c.get_model_repository_index())
    c.load_model(MODEL)
    assert c.is_model_ready(MODEL) and infer_version(c) == "1"
    try:
        c.load_model("nope")
        raise AssertionError("loading a model not on disk succeeded")
    except InferenceServerException as e:
        assert e.status() == "404"

    # Hot reload under a closed-loop load: version 2 appears on disk and the
    # server (polling) swaps it in. No request fails; every answer sent after
    # the first version-2 answer came back is version 2.
    log, errors, stop = [], [], threading.Event()

    def loop():
        cl = client()
        while not stop.is_set():
            sent = time.monotonic()
            try:
                v = infer_version(cl)
                log.append((sent, time.monotonic(), v, threading.get_ident()))
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                errors.append(repr(e))
        cl.close()

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    copy_version(repo, "1", "2")
    wait_for("version 2 to serve", lambda: served_version(c) == "2")
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    v1 = [e for e in log if e[2] == "1"]
    v2 = [e for e in log if e[2] == "2"]
    assert v1 and v2, (len(v1), len(v2))
    first_v2_back = min(e[1] for e in v2)
    late_v1 = [e for e in v1 if e[0] > first_v2_back]
    assert not late_v1, f"{len(late_v1)} requests sent after version 2 answered got version 1"
    for tid in {e[3] for e in log}:
        seq = [e[2] for e in sorted(log) if e[3] == tid]
        assert seq == sorted(seq), f"a client saw the versions go back: {seq}"
    wait_for("version 1 to drain and unload",
             lambda: not any(e["version"] == "1" for e in c.get_model_repository_index()))

    # A broken version 3 fails to load; version 2 keeps serving.
    broken = os.path.join(repo, MODEL, ".incoming-3")
    shutil.copytree(os.path.join(repo, MODEL, "2"), broken)
    with open(os.path.join(broken, "model.onnx"), "wb") as f:
        f.write(b"this is not an ONNX model")
    os.rename(broken, os.path.join(repo, MODEL, "3"))

    def failed():
        return any(e["version"] == "3" and e["state"] == "UNAVAILABLE" and e["reason"]
                   for e in c.get_model_repository_index())
    wait_for("version 3 to fail", failed)
    assert served_version(c) == "2" and c.is_model_ready(MODEL)
    assert infer_version(c) == "2"
    try:
        c.load_model(MODEL)
        raise AssertionError("loading the broken version succeeded")
    except InferenceServerException as e:
        assert e.status() == "400" and "version already served keeps serving" in e.message(), e.message()
    assert infer_version(c) == "2"
    c.close()
    print(f"hot reload: {len(v1)} answers from version 1, {len(v2)} from version 2, none failed")


if __name__ == "__main__":
    scenario = sys.argv[1]
    {"protocol": protocol, "repository": repository}[scenario](sys.argv[5])
    print(f"ok {scenario}")
