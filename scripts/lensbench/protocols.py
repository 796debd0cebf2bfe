"""Lens over HTTP and over gRPC, and a real Triton over both, in one run.

scripts/bench-protocols is the command. One `lens serve --cache-entries 0`
(and, with --triton, one Triton Inference Server: lensbench/triton_peer.py)
runs for the whole run; rounds alternate every (server, protocol, input)
configuration, each driven for SECONDS by CONCURRENCY requests in flight from
tritonclient's asyncio clients (`tritonclient.http.aio`, `tritonclient.grpc.aio`)
in this process, one image per request:

- photos: distinct photos (target/distinct-images) as BYTES, the server
  decodes them; Lens answers classification (class_count=1), Triton the
  probabilities (its Python model has no classification extension);
- tensors: FP32 [1, 3, 224, 224] tensors prepared here from those photos.

The summary gives each configuration's median answers/s and p99 over the
rounds, and the ratios the protocol goals speak of, all from this run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

from .server import ROOT, free_port

MODEL = "efficientnet-lite0"
TRITON_VENV = ROOT / ".venv-triton"
TRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def tensors_from(photos: list[bytes], n: int, model_dir: Path) -> list[np.ndarray]:
    """The model's input for the first `n` photos, by the reference preprocessing."""
    sys.path.insert(0, str(ROOT / "tools"))
    from reference_predict import preprocess

    cfg = tomllib.loads((model_dir / "model.toml").read_text())
    return [preprocess(io.BytesIO(data), cfg) for data in photos[:n]]


class Config:
    def __init__(self, server: str, protocol: str, kind: str, url: str, model: str, classify: bool):
        self.server, self.protocol, self.kind = server, protocol, kind
        self.url, self.model, self.classify = url, model, classify
        self.rates: list[float] = []
        self.p99s: list[float] = []
        self.failed = 0
        self.pid = 0  # the server's, for its CPU time (Lens only)
        self.server_ms: list[float] = []  # server CPU per answer
        self.client_ms: list[float] = []  # this process's CPU per answer

    @property
    def name(self) -> str:
        return f"{self.server} {self.protocol} {self.kind}"


async def drive(cfg: Config, photos: list[bytes], tensors: list[np.ndarray], seconds: float, concurrency: int) -> None:
    if cfg.protocol == "grpc":
        import tritonclient.grpc.aio as client_lib
    else:
        import tritonclient.http.aio as client_lib
    client = client_lib.InferenceServerClient(url=cfg.url)
    outputs = [client_lib.InferRequestedOutput("logits", class_count=1)] if cfg.classify else None
    counter = [0]
    latencies: list[float] = []
    failed = [0]
    stop = time.monotonic() + seconds

    def request(i: int):
        if cfg.kind == "photos":
            x = client_lib.InferInput("image", [1], "BYTES") if cfg.server == "lens" else client_lib.InferInput("image", [1, 1], "BYTES")
            data = np.array([photos[i % len(photos)]], dtype=np.object_)
            x.set_data_from_numpy(data if cfg.server == "lens" else data.reshape(1, 1))
        else:
            x = client_lib.InferInput("input", [1, 3, 224, 224], "FP32")
            x.set_data_from_numpy(tensors[i % len(tensors)])
        return [x]

    async def one(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            inputs = request(i)
            i += concurrency
            started = time.monotonic()
            try:
                await client.infer(cfg.model, inputs, outputs=outputs)
            except Exception:  # counted, and the run goes on
                failed[0] += 1
                continue
            if time.monotonic() <= stop:
                counter[0] += 1
                latencies.append(time.monotonic() - started)

    began, cpu_began, server_began = time.monotonic(), time.process_time(), server_cpu(cfg.pid)
    await asyncio.gather(*(one(k) for k in range(concurrency)))
    took = max(time.monotonic() - began, seconds)
    answers = max(counter[0], 1)
    cfg.client_ms.append((time.process_time() - cpu_began) * 1000 / answers)
    if cfg.pid:
        cfg.server_ms.append((server_cpu(cfg.pid) - server_began) * 1000 / answers)
    await client.close()
    cfg.rates.append(counter[0] / took)
    latencies.sort()
    cfg.p99s.append(latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] * 1000 if latencies else float("nan"))
    cfg.failed += failed[0]


def server_cpu(pid: int) -> float:
    """CPU seconds process `pid` has used (0 for none)."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_lens(lens: Path, extra: list[str]) -> tuple[subprocess.Popen, str, str]:
    http, grpc = free_port(), free_port()
    argv = [str(lens), "serve", "--addr", f"127.0.0.1:{http}", "--grpc-addr", f"127.0.0.1:{grpc}", "--cache-entries", "0", *extra]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_ready(f"127.0.0.1:{http}", proc)
    return proc, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"


def wait_ready(http: str, proc: subprocess.Popen, limit: float = 180) -> None:
    import urllib.request
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{http} did not become ready")


def triton_venv() -> Path:
    python = TRITON_VENV / "bin" / "python"
    if not python.exists():
        print(f"[protocols] making {TRITON_VENV} (Debian's python3, {TRITON_REQUIREMENT})", flush=True)
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(TRITON_VENV)], check=True)
        # Lens's ONNX Runtime and Pillow; pytriton 0.7 needs numpy < 2.
        pins = [TRITON_REQUIREMENT, "numpy==1.26.4"]
        for line in (ROOT / "requirements.txt").read_text().splitlines():
            if re.match(r"^(onnxruntime|pillow)==", line):
                pins.append(line.strip())
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], check=True)
    return python


def start_triton(model_dir: Path) -> tuple[subprocess.Popen, str, str]:
    python = triton_venv()
    http, grpc = free_port(), free_port()
    log = open(ROOT / "target" / "triton-peer.log", "w")
    proc = subprocess.Popen(
        [str(python), str(ROOT / "scripts/lensbench/triton_peer.py"), str(model_dir), str(http), str(grpc)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    wait_ready(f"127.0.0.1:{http}", proc)
    return proc, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"


def stop(proc: subprocess.Popen) -> None:
    """Ends a server and its children (each was started in a session of its own)."""
    try:
        os.killpg(proc.pid, 15)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--images", type=Path, default=ROOT / "target/distinct-images")
    ap.add_argument("--triton", action="store_true", help="also run a real Triton (makes .venv-triton once)")
    ap.add_argument("--kinds", default="photos,tensors")
    ap.add_argument("--lens", type=Path, default=ROOT / "target/release/lens")
    ap.add_argument("lens_args", nargs="*", help="flags for lens serve (after --)")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    files = sorted(args.images.glob("*.jpg"))
    if not files:
        raise SystemExit(f"no photos in {args.images}: run scripts/make_distinct_images.py first")
    photos = [f.read_bytes() for f in files]
    model_dir = ROOT / "models" / MODEL
    tensors = tensors_from(photos, 256, model_dir) if "tensors" in kinds else []

    procs = []
    lens, lens_http, lens_grpc = start_lens(args.lens, args.lens_args)
    procs.append(lens)
    configs = []
    for kind in kinds:
        configs += [Config("lens", "http", kind, lens_http, MODEL, kind == "photos"),
                    Config("lens", "grpc", kind, lens_grpc, MODEL, kind == "photos")]
    for c in configs:
        c.pid = lens.pid
    if args.triton:
        triton, t_http, t_grpc = start_triton(model_dir)
        procs.append(triton)
        for kind in kinds:
            model = MODEL if kind == "photos" else f"{MODEL}-tensor"
            configs += [Config("triton", "http", kind, t_http, model, False),
                        Config("triton", "grpc", kind, t_grpc, model, False)]
    print(f"[protocols] {cpu_name()}, {os.cpu_count()} cores; {len(photos)} photos; "
          f"{args.rounds} rounds x {args.seconds:g} s, {args.concurrency} in flight", flush=True)
    try:
        for cfg in configs:  # warm-up
            asyncio.run(drive(cfg, photos, tensors, 2, args.concurrency))
            for series in (cfg.rates, cfg.p99s, cfg.server_ms, cfg.client_ms):
                series.clear()
            cfg.failed = 0
        for r in range(args.rounds):
            for cfg in configs if r % 2 == 0 else reversed(configs):
                asyncio.run(drive(cfg, photos, tensors, args.seconds, args.concurrency))
                print(f"[protocols] round {r + 1}: {cfg.name}: {cfg.rates[-1]:.1f}/s, p99 {cfg.p99s[-1]:.0f} ms", flush=True)
    finally:
        for p in procs:
            stop(p)

    med = {c.name: statistics.median(c.rates) for c in configs}
    print(f"\n| server | protocol | input | answers/s (median of {args.rounds}) | p99 ms | failed "
          "| server CPU ms/answer | client CPU ms/answer |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for c in configs:
        server_ms = f"{statistics.median(c.server_ms):.2f}" if c.server_ms else "n/a"
        print(f"| {c.server} | {c.protocol} | {c.kind} | {med[c.name]:.1f} | {statistics.median(c.p99s):.0f} | {c.failed} "
              f"| {server_ms} | {statistics.median(c.client_ms):.2f} |")
    print()
    for kind in kinds:
        print(f"lens {kind}: gRPC / HTTP = {med[f'lens grpc {kind}'] / med[f'lens http {kind}']:.2f}")
        if args.triton:
            for proto in ("grpc", "http"):
                print(f"{kind} over {proto}: lens / triton = {med[f'lens {proto} {kind}'] / med[f'triton {proto} {kind}']:.2f}")


if __name__ == "__main__":
    main()
