"""The meme record the API returns and the store keeps (JSON-ready dict)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from memesys.domain.formats import MemeFormat
from memesys.domain.images import image_ref
from memesys.domain.messages import GenerateMeme
from memesys.pipeline.flow import PipelineResult
from memesys.pipeline.lm import LMHandle


def cache_key(request: GenerateMeme, handle: LMHandle, program_hash: str) -> str:
    """Requests that would produce the same meme share a key (topic case and spaces ignored);
    another program (``program_hash``: its instructions or demos changed) is another meme."""
    material = {
        "topic": " ".join(request.topic.lower().split()),
        "format": request.format,
        "style": request.style,
        "audience": request.audience,
        "seed": request.seed,
        "provider": handle.provider,
        "model": handle.model,
        "program": program_hash,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def build_meme(
    meme_id: str,
    request: GenerateMeme,
    fmt: MemeFormat,
    result: PipelineResult,
    png: bytes,
    mode: str,
    timings_ms: dict[str, float],
    program: Mapping[str, str],
    engine: str,
) -> dict[str, Any]:
    """``top_text``/``bottom_text`` are the first and last slot of any format; ``texts`` has
    them all by slot name. ``verification`` has one verdict per verifier plus the list of
    verifiers whose verdict is unavailable (``degraded``); ``provider`` names the model of
    every stage call with its tokens and the hedges sent for it (``name``, ``model``: the call
    that wrote the texts,
    "write" or the fused "select_write"), and the program that ran them (``program``: its
    ``hash`` and ``path``, "builtin" for the built-in one); ``engine`` is the engine that
    made it ("actors" or "inprocess"). ``image`` is the SHA-256 and size of ``png``, its
    picture: the name of the PNG's file and its ETag (the store keeps the PNG as a file)."""
    caption, scores = result.caption, result.scores
    writer = result.stages.get("write") or result.stages["select_write"]
    return {
        "id": meme_id,
        "topic": request.topic,
        "format": fmt.name,
        "format_reason": caption.reason,
        "top_text": caption.texts[0],
        "bottom_text": caption.texts[-1],
        "texts": dict(zip((slot.name for slot in fmt.slots), caption.texts)),
        "style": request.style,
        "audience": request.audience,
        "seed": request.seed,
        "image_url": f"/v1/memes/{meme_id}/image.png",
        "image": image_ref(png),
        "scores": {
            "humor": scores.humor,
            "clarity": scores.clarity,
            "creativity": scores.creativity,
            "shareability": scores.shareability,
            "overall": scores.overall,
            "critique": scores.critique,
        },
        "verification": {
            "verdicts": {
                name: {"status": v.status, "confidence": v.confidence, "reasons": list(v.reasons)}
                for name, v in result.verdicts.items()
            },
            "degraded": list(result.decision.degraded),
        },
        "refinement": [dataclasses.asdict(r) for r in result.rounds],
        "refinement_skipped": result.refinement_skipped,
        "provider": {
            "name": writer.provider,
            "model": writer.model,
            "tokens": sum(run.tokens for run in result.stages.values()),
            "stages": {
                key: {
                    "provider": run.provider,
                    "model": run.model,
                    "tokens": run.tokens,
                    "hedges": run.hedges,
                }
                for key, run in result.stages.items()
            },
            "program": dict(program),
        },
        "pipeline_mode": mode,
        "engine": engine,
        "cached": False,
        "created_at": time.time(),
        "timings": {stage: round(ms, 2) for stage, ms in timings_ms.items()},
        "trace_id": request.trace_id,
    }
