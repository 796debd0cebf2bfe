"""Photos as request bodies: a stream of distinct photos, each JPEG made unique.

The "stamp" is a JPEG comment (COM) segment inserted right after SOI: other
bytes, same pixels. With it, no two request bodies are byte-identical even
when a folder holds fewer photos than a run sends, so no cache keyed on the
bytes (Lens's is) can answer.
"""

from __future__ import annotations

import itertools
import os
import struct
import sys
from pathlib import Path

from . import multipart

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
DEFAULT_DIR = ROOT / "target" / "distinct-images"
# The "imagenet" rows' photos: the same recipe at ImageNet's size (long side 500 px).
IMAGENET_DIR = ROOT / "target" / "imagenet-photos"
IMAGENET_LONG_SIDE = (500, 500)
DEFAULT_COUNT = 2000
DEFAULT_SEED = 20240601
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def stamp_jpeg(data: bytes, tag: bytes) -> bytes:
    """The same JPEG with a comment segment carrying ``tag``; other data unchanged."""
    if not data.startswith(b"\xff\xd8"):
        return data
    return b"".join((data[:2], b"\xff\xfe", struct.pack(">H", len(tag) + 2), tag, data[2:]))


def distinct_folder(folder: Path | None = None) -> Path:
    """``folder``, or the default folder, made first if it holds no photos yet."""
    if folder is not None:
        return folder
    if not any(DEFAULT_DIR.glob("img_*.jpg")):
        # Imported here: it needs numpy and Pillow, which only generating does.
        from .distinct_photos import make

        make(DEFAULT_DIR, DEFAULT_COUNT, DEFAULT_SEED, FIXTURES)
    return DEFAULT_DIR


class PhotoStream:
    """Every photo of a folder in turn, from a per-process offset, each JPEG stamped.

    The offset lets processes started together (locust --processes) begin at
    different photos; the stamp names the process and a sequence number.
    """

    def __init__(self, folder: Path | None = None, stamp: bool = True, tag: str = "lensbench") -> None:
        folder = distinct_folder(folder)
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
        if not self.files:
            sys.exit(f"{folder}: no .jpg/.jpeg/.png/.webp images (scripts/make_distinct_images.py makes some)")
        self.stamp = stamp
        self.prefix = f"{tag} pid={os.getpid()}"
        self.offset = (os.getpid() * 7919) % len(self.files)
        self.counter = itertools.count()

    def next(self) -> tuple[bytes, str]:
        """The next photo's bytes and file name."""
        n = next(self.counter)
        path = self.files[(self.offset + n) % len(self.files)]
        data = path.read_bytes()
        if self.stamp:
            data = stamp_jpeg(data, f"{self.prefix} n={n}".encode())
        return data, path.name

    def next_body(self) -> bytes:
        """The next photo as a multipart body with the part ``file``."""
        return multipart.file_body(*self.next())
