"""The meme record the API returns and the store keeps (JSON-ready dict)."""
from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from memesys.formats import MemeFormat
from memesys.lm import LMHandle
from memesys.messages import GenerateMeme
from memesys.program import Caption


def new_meme_id() -> str:
    return secrets.token_urlsafe(12)


def cache_key(request: GenerateMeme, handle: LMHandle) -> str:
    """Requests that would produce the same meme share a key (topic case and spaces ignored)."""
    material = {
        "topic": " ".join(request.topic.lower().split()),
        "format": request.format, "style": request.style, "audience": request.audience,
        "seed": request.seed, "provider": handle.provider, "model": handle.model,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def build_meme(meme_id: str, request: GenerateMeme, fmt: MemeFormat, caption: Caption,
               handle: LMHandle, timings_ms: dict[str, float]) -> dict[str, Any]:
    """``scores`` and ``verification`` stay empty until the verification pipeline computes
    them; ``top_text``/``bottom_text`` are the first and last slot of any format."""
    texts = dict(zip((slot.name for slot in fmt.slots), caption.texts))
    return {
        "id": meme_id,
        "topic": request.topic,
        "format": fmt.name,
        "format_reason": caption.reason,
        "top_text": caption.texts[0],
        "bottom_text": caption.texts[-1],
        "texts": texts,
        "style": request.style,
        "audience": request.audience,
        "seed": request.seed,
        "image_url": f"/v1/memes/{meme_id}/image.png",
        "scores": None,
        "verification": {},
        "provider": {"name": handle.provider, "model": handle.model, "tokens": caption.tokens},
        "cached": False,
        "created_at": time.time(),
        "timings": {stage: round(ms, 2) for stage, ms in timings_ms.items()},
        "trace_id": request.trace_id,
    }
