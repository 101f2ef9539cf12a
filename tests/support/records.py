"""Meme records as the store keeps them, for tests that write records directly."""

from __future__ import annotations

import json
import random
import string
from typing import Any

from memesys.domain.images import image_ref

PNG = b"\x89PNG\r\n\x1a\n\x00\xffbinary" + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def meme(meme_id: str, created_at: float, **extra: object) -> dict:
    """The fields a stored meme must have (memesys.storage.records.MEME_FIELDS), and the
    ``image`` of :data:`PNG`, the picture tests save with it."""
    return {
        "id": meme_id,
        "created_at": created_at,
        "topic": f"topic {meme_id}",
        "format": "drake",
        "top_text": "top",
        "bottom_text": "bottom",
        "image_url": f"/v1/memes/{meme_id}/image.png",
        "scores": {"overall": 0.5},
        "verification": {"verdicts": {}},
        "provider": {"name": "offline"},
        "image": image_ref(PNG),
        **extra,
    }


def legacy_meme(
    client: Any, prefix: str, meme_id: str, created_at: float, png: bytes = PNG
) -> dict:
    """A meme saved as versions before PNG files saved it: the record without ``image``, the
    PNG at ``{prefix}:png:{id}``, its index entry. Returns the record."""
    record = meme(meme_id, created_at)
    del record["image"]
    client.set(f"{prefix}:meme:{meme_id}", json.dumps(record))
    client.set(f"{prefix}:png:{meme_id}", png)
    client.zadd(f"{prefix}:memes", {meme_id: created_at})
    return record


def letters(n: int) -> str:
    """``n`` random lowercase letters: a mark for a topic that no verifier takes for a phone or
    ID number (random hex can be all digits)."""
    return "".join(random.choice(string.ascii_lowercase) for _ in range(n))
