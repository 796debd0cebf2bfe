"""Make N distinct, real-size JPEG photos for the "distinct" load scenario.

Every image is derived from one of the real fixture photos
(tests/fixtures/{dog.jpeg,grace_hopper.jpg,coffee.png,chelsea.png}) by a
random crop, an optional mirror, a rescale, colour jitter (brightness,
contrast, saturation, a slight tint) and a random JPEG quality. The seed is
fixed, so the same N and seed give byte-identical files on any run; a
manifest (manifest.json) records what was asked for, and a folder that
already matches is left alone.

    .venv/bin/python scripts/make_distinct_images.py            # 2000 into target/distinct-images
    .venv/bin/python scripts/make_distinct_images.py -n 500 --out /tmp/imgs
    .venv/bin/python scripts/make_distinct_images.py --long-side 500 --out target/imagenet-photos

The default photos have a long side of 400 to 1280 px (median about 800x600,
0.5 MP); ``--long-side 500`` makes them the size of ImageNet's, whose long
side is 500 px for most photos (500x375, 500x333), about 0.18 MP.

(scripts/make_distinct_images.py calls ``main`` here.)

Needs numpy and Pillow (both in requirements.txt).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from .photos import DEFAULT_COUNT, DEFAULT_DIR, DEFAULT_SEED, FIXTURES

SOURCES = ["dog.jpeg", "grace_hopper.jpg", "coffee.png", "chelsea.png"]
VERSION = 1  # bump when the recipe changes, so old folders are regenerated
DEFAULT_LONG_SIDE = (400, 1280)


def load_sources(fixtures: Path) -> list[tuple[str, Image.Image]]:
    out = []
    for name in SOURCES:
        with Image.open(fixtures / name) as im:
            out.append((name, im.convert("RGB")))
    return out


def variant(src: Image.Image, rng: np.random.Generator, long_side: tuple[int, int] = DEFAULT_LONG_SIDE) -> tuple[Image.Image, int]:
    w, h = src.size
    # Crop 55-100% of each side, anywhere in the frame.
    cw = int(w * rng.uniform(0.55, 1.0))
    ch = int(h * rng.uniform(0.55, 1.0))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    im = src.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # Rescale to a photo-like size: by default the long side between 400 and
    # 1280 px (the fixtures are 451-729 px wide; the original test sent 729x486).
    side = int(rng.integers(long_side[0], long_side[1] + 1))
    scale = side / max(im.size)
    size = (max(32, round(im.size[0] * scale)), max(32, round(im.size[1] * scale)))
    resample = [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS][int(rng.integers(0, 3))]
    im = im.resize(size, resample)
    # Colour jitter.
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.75, 1.25))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.75, 1.25))
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.6, 1.4))
    tint = rng.uniform(0.92, 1.08, size=3)
    arr = np.asarray(im, dtype=np.float32) * tint
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    quality = int(rng.integers(70, 96))
    return im, quality


def manifest_for(n: int, seed: int, long_side: tuple[int, int]) -> dict:
    m = {"version": VERSION, "n": n, "seed": seed, "sources": SOURCES}
    if long_side != DEFAULT_LONG_SIDE:  # so folders made before the option still match
        m["long_side"] = list(long_side)
    return m


def make(out: Path, n: int, seed: int, fixtures: Path, force: bool = False,
         long_side: tuple[int, int] = DEFAULT_LONG_SIDE) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    want = manifest_for(n, seed, long_side)
    mpath = out / "manifest.json"
    if not force and mpath.exists():
        try:
            have = json.loads(mpath.read_text())
        except ValueError:
            have = None
        same = have and {k: have.get(k) for k in want} == want and have.get("long_side") == want.get("long_side")
        if same and len(list(out.glob("img_*.jpg"))) == n:
            print(f"{out}: {n} images already made (seed {seed})")
            return out
    for old in out.glob("img_*.jpg"):
        old.unlink()
    sources = load_sources(fixtures)
    rng = np.random.default_rng(seed)
    digests = set()
    total = 0
    for i in range(n):
        name, src = sources[int(rng.integers(0, len(sources)))]
        im, quality = variant(src, rng, long_side)
        path = out / f"img_{i:05d}.jpg"
        im.save(path, "JPEG", quality=quality, optimize=False, progressive=bool(rng.random() < 0.2))
        data = path.read_bytes()
        digests.add(hashlib.sha256(data).hexdigest())
        total += len(data)
    if len(digests) != n:
        sys.exit(f"only {len(digests)} of {n} images are distinct: change the seed")
    mpath.write_text(json.dumps({**want, "bytes": total}, indent=1) + "\n")
    print(f"{out}: made {n} distinct JPEGs, {total / n / 1024:.0f} KiB on average (seed {seed})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="scripts/make_distinct_images.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--count", type=int, default=DEFAULT_COUNT, help=f"images to make (default {DEFAULT_COUNT})")
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR, help="output folder")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default fixed)")
    ap.add_argument("--fixtures", type=Path, default=FIXTURES)
    ap.add_argument("--force", action="store_true", help="regenerate even if the folder matches")
    ap.add_argument("--long-side", metavar="MIN[,MAX]", default="400,1280",
                    help="the long side of each photo in px, or its range (default 400,1280; ImageNet's size is 500)")
    args = ap.parse_args()
    if args.count < 1:
        ap.error("--count must be at least 1")
    try:
        sides = [int(x) for x in args.long_side.split(",")]
    except ValueError:
        ap.error("--long-side takes MIN or MIN,MAX in px")
    long_side = (sides[0], sides[-1])
    if len(sides) > 2 or not 32 <= long_side[0] <= long_side[1] <= 8192:
        ap.error("--long-side takes MIN or MIN,MAX, within 32..8192 px")
    make(args.out, args.count, args.seed, args.fixtures, args.force, long_side)
