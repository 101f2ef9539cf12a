"""What a meme record keeps of its picture: the PNG's SHA-256 and its size.

The PNG itself is a file named by that digest (:mod:`memesys.storage.images`); the digest is
also its HTTP ``ETag``. Defined here, once, because the meme flow writes it into the record
(:mod:`memesys.pipeline.record`) and the store checks it (:mod:`memesys.storage.records`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def image_ref(png: bytes) -> dict[str, Any]:
    """The record's ``image`` field for ``png``: ``{"sha256": hex digest, "bytes": size}``."""
    return {"sha256": hashlib.sha256(png).hexdigest(), "bytes": len(png)}


def valid_digest(value: object) -> bool:
    """Whether ``value`` is a SHA-256 as :func:`image_ref` writes it (64 lowercase hex)."""
    return isinstance(value, str) and DIGEST_RE.fullmatch(value) is not None
