"""multipart/form-data request bodies, as a browser's upload form sends them.

One fixed boundary: a boundary string of this length does not occur by
chance in a photo, and a fixed one lets a body be built once and resent.
"""

from __future__ import annotations

from pathlib import Path

BOUNDARY = "lensbench-5f3a9c1e7d2b"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif"}


def file_body(data: bytes, filename: str, field: str = "file") -> bytes:
    """A body with one file part named ``field`` (Lens reads ``file``)."""
    mime = MIME.get(Path(filename).suffix.lower(), "application/octet-stream")
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {mime}\r\n\r\n"
    ).encode()
    return b"".join((head, data, f"\r\n--{BOUNDARY}--\r\n".encode()))
