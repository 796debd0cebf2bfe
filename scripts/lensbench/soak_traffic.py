"""The soak test's traffic: the inputs, the mix of request kinds, and what each kind is expected to get back.

Kinds, picked at random per arrival with the weights of ``KINDS``:

- ``photo``: POST /predict of a distinct photo from target/distinct-images (the default
  folder of scripts/make_distinct_images.py), stamped so no cache helps.
- ``photo-12mp``: POST /predict of a 4032x3024 JPEG, the fixture photos
  upscaled with noise, some with an EXIF orientation tag; stamped too.
- ``repeat``: POST /predict of tests/fixtures/dog.jpeg, the same bytes every
  time (the cache and coalescing path).
- ``page``: POST / of a distinct photo: the upload page, which keeps the
  upload on disk under --data-dir.
- ``feedback``: POST /feedback (urlencoded ``image_sha256``,
  ``predicted_label``, ``score``, ``correct_label``) about a recent page
  upload, which copies its image into the feedback store.
- ``hostile``: a truncated JPEG, random bytes, an empty file, a text file
  named .jpg, a PNG header declaring 100000x100000; to /predict or /.
- ``slow``: a distinct photo to /predict, sent in 10 pieces over 2-4 s.

Every kind but ``hostile`` expects a 2xx (429 counts as shed, not as an
error); ``hostile`` expects a 4xx. No kind may get a 5xx or no answer.
"""

from __future__ import annotations

import collections
import hashlib
import html
import random
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from . import multipart
from .openloop import TRANSPORT_ERRORS, Pool, error_name, percentile
from .photos import FIXTURES, ROOT, PhotoStream, stamp_jpeg


@dataclass(frozen=True)
class Kind:
    name: str
    weight: float
    expect: str  # "2xx" or "4xx"
    timed: bool  # counts in the windows' p50/p99 (not the deliberately slow or failing ones)
    what: str


KINDS = [
    Kind("photo", 50, "2xx", True, "POST /predict, a distinct photo (target/distinct-images)"),
    Kind("photo-12mp", 3, "2xx", True, "POST /predict, a 4032x3024 JPEG (half with an EXIF orientation)"),
    Kind("repeat", 15, "2xx", True, "POST /predict, dog.jpeg, identical bytes every time"),
    Kind("page", 10, "2xx", True, "POST / (upload page), a distinct photo, kept on disk"),
    Kind("feedback", 7, "2xx", True, "POST /feedback about a recent page upload"),
    Kind("hostile", 10, "4xx", False, "truncated JPEG, random bytes, empty, text named .jpg, PNG declaring 100000x100000"),
    Kind("slow", 5, "2xx", False, "POST /predict, a distinct photo sent in 10 pieces over 2-4 s"),
]
BIG_DIR = ROOT / "target" / "soak-photos"
BIG_SIZE = (4032, 3024)
BIG_RECIPE = 1  # bump when the recipe below changes, so old files are remade
BIG_PER_FIXTURE = 2
BIG_SOURCES = ["dog.jpeg", "grace_hopper.jpg", "coffee.png", "chelsea.png"]
ORIENTATIONS = [1, 6, 1, 8, 1, 3, 1, 6]  # EXIF 0x0112: 1 upright, 3 180 degrees, 6/8 a quarter turn


def big_photos(folder: Path = BIG_DIR) -> list[Path]:
    """The 12-megapixel JPEGs, made once into target/soak-photos (a few seconds each)."""
    want = [folder / f"big_{BIG_RECIPE}_{i:02d}.jpg" for i in range(len(BIG_SOURCES) * BIG_PER_FIXTURE)]
    if all(p.exists() for p in want):
        return want
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12_000_000)
    for i, path in enumerate(want):
        with Image.open(FIXTURES / BIG_SOURCES[i // BIG_PER_FIXTURE]) as src:
            im = src.convert("RGB")
        w, h = im.size
        cw, ch = min(w, h * 4 // 3), min(h, w * 3 // 4)  # the largest 4:3 crop, somewhere in the frame
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x0, y0, x0 + cw, y0 + ch)).resize(BIG_SIZE, Image.Resampling.BICUBIC)
        noisy = np.asarray(im, dtype=np.float32) + rng.normal(0, 6, (BIG_SIZE[1], BIG_SIZE[0], 3)).astype(np.float32)
        im = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
        exif = Image.Exif()
        exif[0x0112] = ORIENTATIONS[i % len(ORIENTATIONS)]
        im.save(path, "JPEG", quality=90, exif=exif.tobytes())
    print(f"{folder}: made {len(want)} photos of {BIG_SIZE[0]}x{BIG_SIZE[1]}", flush=True)
    return want


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with one tiny data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def hostile_inputs(seed: int) -> list[tuple[str, bytes]]:
    dog = (FIXTURES / "dog.jpeg").read_bytes()
    return [
        ("truncated.jpg", dog[: len(dog) * 3 // 5]),
        ("noise.jpg", random.Random(seed).randbytes(64 * 1024)),
        ("empty.jpg", b""),
        ("notes.jpg", b"This is a text file with a .jpg name, not an image.\n" * 40),
        ("huge.png", png_declaring(100_000, 100_000)),
    ]


def status_class(status: int) -> str:
    if status == 0:
        return "no answer"
    if status == 429:
        return "429"
    return f"{status // 100}xx"


@dataclass
class Window:
    """What was answered since the last sample."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    timed_ms: list[float] = field(default_factory=list)


class Outcomes:
    """Every answer, by kind and status; per-window counts and latencies for the samples.

    Whole-run latencies per kind are a uniform sample of at most
    ``KEEP_PER_KIND`` (reservoir sampling), so a day-long soak holds as
    little as a short one.
    """

    KEEP_PER_KIND = 20_000

    def __init__(self) -> None:
        self.by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.ms_by_kind: dict[str, list[float]] = collections.defaultdict(list)
        self.rng = random.Random(0)
        self.unexpected: collections.Counter = collections.Counter()  # (kind, status) outside the kind's expectation
        self.errors: collections.Counter = collections.Counter()  # transport errors by name
        self.window = Window()

    def done(self, kind: Kind, status: int, ms: float) -> None:
        cls = status_class(status)
        counts = self.by_kind[kind.name]
        counts[cls] += 1
        kept, seen = self.ms_by_kind[kind.name], sum(counts.values())
        if len(kept) < self.KEEP_PER_KIND:
            kept.append(ms)
        elif (i := self.rng.randrange(seen)) < self.KEEP_PER_KIND:
            kept[i] = ms
        self.window.counts[cls] += 1
        if kind.timed and 200 <= status < 300:
            self.window.timed_ms.append(ms)
        if cls not in (kind.expect, "429"):
            self.unexpected[(kind.name, status)] += 1

    def take_window(self) -> dict:
        w, self.window = self.window, Window()
        ms = sorted(w.timed_ms)
        p50, p99 = percentile(ms, 50), percentile(ms, 99)
        return {
            "answered": sum(w.counts.values()) - w.counts["no answer"],
            "2xx": w.counts["2xx"],
            "4xx": w.counts["4xx"] + w.counts["429"],
            "429": w.counts["429"],
            "5xx": w.counts["5xx"],
            "no_answer": w.counts["no answer"],
            "p50_ms": round(p50, 1) if p50 is not None else None,
            "p99_ms": round(p99, 1) if p99 is not None else None,
        }

    def totals(self) -> collections.Counter:
        """Answers of every kind by status class."""
        out: collections.Counter = collections.Counter()
        for counts in self.by_kind.values():
            out.update(counts)
        return out

    def per_kind(self) -> list[dict]:
        rows = []
        for kind in KINDS:
            c = self.by_kind.get(kind.name, collections.Counter())
            ms = sorted(self.ms_by_kind.get(kind.name, []))
            rows.append({"kind": kind.name, "requests": sum(c.values()), **{k: c[k] for k in ("2xx", "4xx", "429", "5xx", "no answer")},
                         "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99)})
        return rows


@dataclass
class Request:
    path: str
    body: bytes
    content_type: str = multipart.CONTENT_TYPE
    headers: dict[str, str] | None = None
    chunks: int = 1  # > 1: sent in pieces over spread_s, like a slow client
    spread_s: float = 0.0
    upload_sha256: str | None = None  # a page upload, remembered for later feedback


class Traffic:
    """The mix: ``fire(scheduled)`` sends one request of a kind picked at random and records it."""

    RECENT_UPLOADS = 64
    _PREDICTED = re.compile(r"Predicted class:\s*(?:<[^>]*>\s*)*([^<\n]+)")
    _SCORE = re.compile(r"Score:\s*(?:<[^>]*>\s*)*([0-9.]+)")

    def __init__(self, pool: Pool, photos: PhotoStream, big: list[Path], labels: list[str], seed: int, timeout: float):
        self.pool = pool
        self.photos = photos
        self.big = [(p.read_bytes(), p.name) for p in big]
        self.dog_body = multipart.file_body((FIXTURES / "dog.jpeg").read_bytes(), "dog.jpeg")
        self.hostile = [multipart.file_body(data, name) for name, data in hostile_inputs(seed)]
        self.labels = labels or ["Eskimo_dog"]
        self.rng = random.Random(seed)
        self.timeout = timeout
        self.recent: collections.deque = collections.deque(maxlen=self.RECENT_UPLOADS)  # (sha256, label, score)
        self.outcomes = Outcomes()
        self.sent = 0

    def _pick(self) -> Kind:
        return self.rng.choices(KINDS, weights=[k.weight for k in KINDS])[0]

    def _big_body(self) -> bytes:
        data, name = self.big[self.sent % len(self.big)]
        return multipart.file_body(stamp_jpeg(data, f"lens-soak big n={self.sent}".encode()), name)

    def _feedback(self) -> Request:
        sha, label, score = self.rng.choice(self.recent) if self.recent else (hashlib.sha256(b"").hexdigest(), self.labels[0], 0.5)
        form = {"image_sha256": sha, "predicted_label": label, "score": f"{score:.4f}", "correct_label": self.rng.choice(self.labels)}
        return Request("/feedback", urlencode(form).encode(), "application/x-www-form-urlencoded", {"Accept": "application/json"})

    def _request(self, kind: Kind) -> Request:
        if kind.name == "photo":
            return Request("/predict", self.photos.next_body())
        if kind.name == "photo-12mp":
            return Request("/predict", self._big_body())
        if kind.name == "repeat":
            return Request("/predict", self.dog_body)
        if kind.name == "page":
            data, name = self.photos.next()
            return Request("/", multipart.file_body(data, name), upload_sha256=hashlib.sha256(data).hexdigest())
        if kind.name == "feedback":
            return self._feedback()
        if kind.name == "hostile":
            return Request(self.rng.choice(("/predict", "/")), self.hostile[self.sent % len(self.hostile)])
        return Request("/predict", self.photos.next_body(), chunks=10, spread_s=self.rng.uniform(2.0, 4.0))

    def _remember_upload(self, sha: str, page: bytes) -> None:
        text = page.decode(errors="replace")
        label, score = self._PREDICTED.search(text), self._SCORE.search(text)
        if label:
            self.recent.append((sha, html.unescape(label.group(1).strip()), float(score.group(1)) if score else 0.5))

    async def fire(self, scheduled: float) -> None:
        kind = self._pick()
        self.sent += 1
        r = self._request(kind)
        try:
            status, payload = await self.pool.post(r.path, r.body, r.content_type, self.timeout, r.headers, r.chunks, r.spread_s)
        except TRANSPORT_ERRORS as e:
            self.outcomes.errors[error_name(e)] += 1
            status, payload = 0, b""
        self.outcomes.done(kind, status, (time.perf_counter() - scheduled) * 1000)
        if r.upload_sha256 and status == 200:
            self._remember_upload(r.upload_sha256, payload)
