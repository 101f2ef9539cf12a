"""What a client's ``Accept`` header asks ``POST /v1/memes`` for: the meme's JSON (the default)
or its PNG (``curl -H 'Accept: image/png' -o meme.png``)."""

from __future__ import annotations

MAX_RANGES = 32  # media ranges read from one header


def _weights(accept: str) -> dict[str, float]:
    """Each media range's quality (``q``, 1 when not given; a malformed one is 0)."""
    weights: dict[str, float] = {}
    for part in accept.split(",")[:MAX_RANGES]:
        media, *params = part.split(";")
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    weight = 0.0
        weights[media.strip().lower()] = weight
    return weights


def wants_png(accept: str | None) -> bool:
    """Whether the PNG is asked for: ``image/png`` named with q > 0 and ranked above
    ``application/json`` (if that is named at all). Wildcards (``*/*``, ``image/*``) keep the
    JSON: a browser's ``fetch`` sends ``*/*``."""
    if not accept:
        return False
    weights = _weights(accept)
    png = weights.get("image/png", 0.0)
    return png > 0 and png > weights.get("application/json", 0.0)
