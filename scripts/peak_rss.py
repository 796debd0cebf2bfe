#!/usr/bin/env python3
"""Peak RSS and throughput of `lens serve` under a closed loop, one configuration after another.

    .venv/bin/python scripts/peak_rss.py 'fp32=--precision fp32' 'int8=--precision int8' [--seconds 20] [--clients 32]

Each configuration gets a fresh `target/release/lens serve --cache-entries 0` on a free loopback port
with the given extra flags, `--clients` threads posting distinct photos from target/distinct-images
(made by scripts/make_distinct_images.py) to /predict for `--seconds`, then its VmHWM is read from
/proc. Prints one line per configuration. Loopback only; the server is stopped after its run.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path


def run(name, flags, photos, seconds, clients):
    with tempfile.TemporaryDirectory() as data:
        argv = ["target/release/lens", "serve", "--addr", "127.0.0.1:0", "--cache-entries", "0", "--data-dir", data]
        env = {"LENS_GRPC_ADDR": "127.0.0.1:0", **os.environ}
        server = subprocess.Popen(argv + shlex.split(flags), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        url = next(line.split()[-1] for line in server.stdout if line.startswith("listening on "))
        time.sleep(3)
        stop, answered, failed, lock = time.time() + seconds, [0], [0], threading.Lock()

        def client(k):
            i = k
            while time.time() < stop:
                photo = photos[i % len(photos)].read_bytes()
                i += clients
                b = uuid.uuid4().hex
                head = f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'.encode()
                req = urllib.request.Request(url + "/predict", data=head + photo + f"\r\n--{b}--\r\n".encode(),
                                             headers={"Content-Type": f"multipart/form-data; boundary={b}"})
                try:
                    urllib.request.urlopen(req, timeout=30).read()
                    with lock:
                        answered[0] += 1
                except Exception:
                    with lock:
                        failed[0] += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        hwm_kb = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{server.pid}/status").read_text()).group(1))
        server.terminate()
        server.wait()
    print(f"{name}: {answered[0] / seconds:.1f} img/s, {failed[0]} failed, peak RSS {hwm_kb / 1024:.0f} MB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", help="NAME=EXTRA_SERVE_FLAGS")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=32)
    a = ap.parse_args()
    photos = sorted(Path("target/distinct-images").glob("*.jpg"))
    if not photos:
        sys.exit("no photos in target/distinct-images: run .venv/bin/python scripts/make_distinct_images.py")
    for config in a.configs:
        name, _, flags = config.partition("=")
        run(name, flags, photos, a.seconds, a.clients)


if __name__ == "__main__":
    main()
