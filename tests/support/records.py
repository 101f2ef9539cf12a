"""Meme records as the store keeps them, for tests that write records directly."""

from __future__ import annotations

PNG = b"\x89PNG\r\n\x1a\n\x00\xffbinary" + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def meme(meme_id: str, created_at: float, **extra: object) -> dict:
    """The fields a stored meme must have (memesys.storage.records.MEME_FIELDS)."""
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
        **extra,
    }
