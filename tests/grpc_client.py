"""Lens driven over gRPC by the Open Inference Protocol's standard Python
client (tritonclient[grpc]), as a user would call it, unchanged.
tests/grpc.rs starts a real `lens serve` and runs one scenario against it:

    grpc_client.py protocol GRPC HTTP MODEL FIXTURES MODEL_DIR
    grpc_client.py keys     GRPC HTTP MODEL FIXTURES USER_KEY ADMIN_KEY
    grpc_client.py limits   GRPC HTTP MODEL FIXTURES
    grpc_client.py rate     GRPC HTTP MODEL FIXTURES

Every check raises on failure; the script prints "ok <scenario>" at the end.
"""

import json
import os
import sys
import threading
import time
import tomllib
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from reference_predict import preprocess  # noqa: E402

SCENARIO, GRPC, HTTP, MODEL, FIXTURES = sys.argv[1:6]
HTTP = HTTP.removeprefix("http://")
DOG, ESPRESSO = 248, 967


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def client():
    return grpcclient.InferenceServerClient(url=GRPC)


def images(photos):
    i = grpcclient.InferInput("image", [len(photos)], "BYTES")
    i.set_data_from_numpy(np.array([fixture(p) for p in photos], dtype=np.object_))
    return i


def tensor_of(photo, model_dir):
    """The FP32 tensor the model takes, prepared by the reference preprocessing."""
    cfg = tomllib.loads(open(os.path.join(model_dir, "model.toml")).read())
    return preprocess(os.path.join(FIXTURES, photo), cfg)


def classes(result):
    out = []
    for s in result.as_numpy("logits").reshape(-1):
        score, index, label = s.decode().split(":", 2)
        out.append((float(score), int(index), label))
    return out


def refused(call, status, *words, **kwargs):
    """`call` fails with the gRPC `status`, its message holding `words`."""
    try:
        call(**kwargs)
    except InferenceServerException as e:
        assert e.status() == f"StatusCode.{status}", (e.status(), e.message())
        for w in words:
            assert w in e.message(), (w, e.message())
        return e.message()
    raise AssertionError(f"expected {status}, the call succeeded")


def metric(name):
    text = urllib.request.urlopen(f"http://{HTTP}/metrics", timeout=30).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(name) and l[len(name)] in " {")


def protocol(model_dir):
    c = client()
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    for ext in ["classification", "model_repository", "statistics", "model_configuration"]:
        assert ext in meta.extensions, meta
    assert c.is_model_ready(MODEL) and c.is_model_ready(MODEL, "1")
    refused(lambda: c.is_model_ready(MODEL, "99"), "NOT_FOUND", "99")
    md = c.get_model_metadata(MODEL)
    assert list(md.versions) == ["1"] and list(md.inputs[0].shape) == [-1, 3, 224, 224], md
    assert md.inputs[1].datatype == "BYTES" and list(md.outputs[0].shape) == [-1, 1000], md
    cfg = c.get_model_config(MODEL).config
    assert cfg.max_batch_size >= 8 and list(cfg.input[0].dims) == [3, 224, 224], cfg
    assert list(cfg.output[0].dims) == [1000] and cfg.instance_group[0].count >= 1, cfg
    labels = open(os.path.join(model_dir, "labels.txt")).read().split()
    before = c.get_inference_statistics(MODEL).model_stats[0].inference_stats.success.count

    # BYTES photos, probabilities out: the same numbers the HTTP front answers.
    r = c.infer(MODEL, [images(["dog.jpeg", "coffee.png"])])
    probs = r.as_numpy("logits")
    assert probs.shape == (2, 1000) and probs.dtype == np.float32, probs.shape
    assert list(probs.argmax(axis=1)) == [DOG, ESPRESSO], probs.argmax(axis=1)
    assert r.get_response().model_version == "1"
    h = httpclient.InferenceServerClient(url=HTTP)
    hi = httpclient.InferInput("image", [2], "BYTES")
    hi.set_data_from_numpy(np.array([fixture("dog.jpeg"), fixture("coffee.png")], dtype=np.object_))
    assert np.allclose(h.infer(MODEL, [hi]).as_numpy("logits"), probs, atol=1e-6), "HTTP and gRPC differ"

    # Classification strings.
    rc = c.infer(MODEL, [images(["dog.jpeg", "coffee.png"])],
                 outputs=[grpcclient.InferRequestedOutput("logits", class_count=3)])
    top = classes(rc)
    assert rc.as_numpy("logits").shape == (2, 3)
    assert (top[0][1], top[0][2]) == (DOG, labels[DOG]) and top[3][1] == ESPRESSO, top
    assert top[0][0] >= top[1][0] >= top[2][0] and abs(top[0][0] - probs[0][DOG]) < 1e-4

    # A batch of 4 in one request, answered in order.
    four = ["coffee.png", "dog.jpeg", "coffee.png", "dog.jpeg"]
    p4 = c.infer(MODEL, [images(four)]).as_numpy("logits")
    assert list(p4.argmax(axis=1)) == [ESPRESSO, DOG, ESPRESSO, DOG], p4.argmax(axis=1)

    # An FP32 tensor (raw_input_contents): the photo's class.
    t = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
    t.set_data_from_numpy(tensor_of("dog.jpeg", model_dir))
    assert int(c.infer(MODEL, [t]).as_numpy("logits").argmax()) == DOG

    # async_infer: the callback gets the answer.
    done, got = threading.Event(), {}
    def callback(result, error):
        got["result"], got["error"] = result, error
        done.set()
    c.async_infer(MODEL, [images(["dog.jpeg"])], callback,
                  outputs=[grpcclient.InferRequestedOutput("logits", class_count=1)])
    assert done.wait(120) and got["error"] is None, got
    assert classes(got["result"])[0][1] == DOG

    # Errors: the right status and a clear message.
    bad = grpcclient.InferInput("image", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"this is not an image"], dtype=np.object_))
    refused(lambda: c.infer(MODEL, [bad]), "INVALID_ARGUMENT", "not a supported image")
    small = grpcclient.InferInput("input", [1, 3, 2, 2], "FP32")
    small.set_data_from_numpy(np.zeros((1, 3, 2, 2), np.float32))
    refused(lambda: c.infer(MODEL, [small]), "INVALID_ARGUMENT", "shape")
    ints = grpcclient.InferInput("input", [1, 3, 224, 224], "INT32")
    ints.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.int32))
    refused(lambda: c.infer(MODEL, [ints]), "INVALID_ARGUMENT", "INT32", "BYTES or FP32")
    refused(lambda: c.infer("nope", [images(["dog.jpeg"])]), "NOT_FOUND", "nope")
    refused(lambda: c.infer(MODEL, [images(["dog.jpeg"])], model_version="7"), "NOT_FOUND", "7")

    # Statistics count the inferences above (2 + 2 + 4 + 1 + 1, and HTTP's 2).
    after = c.get_inference_statistics(MODEL).model_stats[0].inference_stats.success.count
    assert after - before >= 12, (before, after)

    # The repository index lists what is served, even without --models-dir;
    # loading needs a repository and says so.
    index = c.get_model_repository_index().models
    assert [(m.name, m.version, m.state) for m in index] == [(MODEL, "1", "READY")], index
    assert json.loads(json.dumps(h.get_model_repository_index())) == [
        {"name": MODEL, "version": "1", "state": "READY", "reason": ""}]
    refused(lambda: c.load_model(MODEL), "INVALID_ARGUMENT", "--models-dir")


def keys(user, admin):
    anonymous, wrong = client(), client()
    headers = lambda key: {"authorization": f"Bearer {key}"}
    # Health stays open.
    assert anonymous.is_server_live() and anonymous.is_server_ready()
    refused(lambda: anonymous.infer(MODEL, [images(["dog.jpeg"])]), "UNAUTHENTICATED", "API key")
    refused(lambda: wrong.infer(MODEL, [images(["dog.jpeg"])], headers=headers("not-a-key")), "UNAUTHENTICATED")
    refused(lambda: anonymous.get_model_metadata(MODEL), "UNAUTHENTICATED")
    r = client().infer(MODEL, [images(["dog.jpeg"])], headers=headers(user))
    assert int(r.as_numpy("logits").argmax()) == DOG
    # Repository calls need an admin key.
    refused(lambda: client().load_model(MODEL, headers=headers(user)), "PERMISSION_DENIED", "admin")
    refused(lambda: client().unload_model(MODEL, headers=headers(user)), "PERMISSION_DENIED", "admin")
    c = client()
    c.unload_model(MODEL, headers=headers(admin))
    refused(lambda: c.infer(MODEL, [images(["dog.jpeg"])], headers=headers(admin)), "NOT_FOUND")
    c.load_model(MODEL, headers=headers(admin))
    assert c.is_model_ready(MODEL, "1", headers=headers(admin))
    index = c.get_model_repository_index(headers=headers(user)).models
    assert (MODEL, "1", "READY") in [(m.name, m.version, m.state) for m in index], index


def limits():
    c = client()
    # A message over --body-limit (1 MB here): 4 tensors are 2.4 MB.
    big = grpcclient.InferInput("input", [4, 3, 224, 224], "FP32")
    big.set_data_from_numpy(np.zeros((4, 3, 224, 224), np.float32))
    refused(lambda: c.infer(MODEL, [big]), "RESOURCE_EXHAUSTED")
    assert c.is_server_live()

    # A deadline shorter than the queue wait: DEADLINE_EXCEEDED, and the jobs
    # not yet started are never inferred. 64 distinct tensors side by side
    # are a third of a second of work or more; each call gives up after 50 ms.
    batch = np.random.default_rng(7).standard_normal((64, 3, 224, 224), dtype=np.float32)
    inferred_before, abandoned_before = metric("lens_inferred_images_total"), metric("lens_dropped_jobs_total")
    errors, lock = [], threading.Lock()
    def one(k):
        t = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
        t.set_data_from_numpy(batch[k:k + 1])
        try:
            client().infer(MODEL, [t], client_timeout=0.05)
        except InferenceServerException as e:
            with lock:
                errors.append(e.status())
    threads = [threading.Thread(target=one, args=(k,)) for k in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "StatusCode.DEADLINE_EXCEEDED" in errors, errors
    assert set(errors) <= {"StatusCode.DEADLINE_EXCEEDED"}, errors
    time.sleep(3)
    inferred = metric("lens_inferred_images_total") - inferred_before
    abandoned = metric("lens_dropped_jobs_total") - abandoned_before
    print(f"{len(errors)} of 64 calls passed their deadline; {inferred:.0f} inferred, {abandoned:.0f} abandoned")
    assert inferred < 64 and abandoned > 0, (inferred, abandoned)


def rate():
    # This server allows 1 request a second per client, a burst of 2.
    statuses = []
    for _ in range(6):
        try:
            client().infer(MODEL, [images(["dog.jpeg"])])
            statuses.append("OK")
        except InferenceServerException as e:
            statuses.append(e.status())
            assert "too many requests" in e.message(), e.message()
    assert "StatusCode.RESOURCE_EXHAUSTED" in statuses and "OK" in statuses, statuses


if __name__ == "__main__":
    if SCENARIO == "protocol":
        protocol(sys.argv[6])
    elif SCENARIO == "keys":
        keys(sys.argv[6], sys.argv[7])
    elif SCENARIO == "limits":
        limits()
    elif SCENARIO == "rate":
        rate()
    else:
        raise SystemExit(f"unknown scenario {SCENARIO}")
    print(f"ok {SCENARIO}")
