"""Build the language model the meme program runs on: the offline writer or an OpenAI-compatible
endpoint. Both are single-attempt and uncached; the daemon owns retries, breakers and caching.
"""
from __future__ import annotations

from dataclasses import dataclass

import dspy

from memesys.offline.engine import MODEL, PROVIDER, AsyncOfflineEngine, OfflineEngine

OFFLINE = "offline"
OPENAI_COMPATIBLE = "openai-compatible"


@dataclass(frozen=True)
class LMHandle:
    """An LM plus the names telemetry and responses report for it."""

    lm: dspy.LM
    provider: str
    model: str


def offline_lm() -> LMHandle:
    """The offline writer behind DSPy's canonical custom-engine contract."""
    lm = dspy.LM(model=f"{PROVIDER}/{MODEL}", engine=OfflineEngine(),
                 async_engine=AsyncOfflineEngine(), cache=False, num_retries=0)
    return LMHandle(lm=lm, provider=PROVIDER, model=MODEL)


def openai_compatible_lm(model: str, api_key: str, base_url: str, timeout_s: float) -> LMHandle:
    """One attempt per call against an OpenAI-compatible chat endpoint.

    engine="lm15" pins DSPy 3.4's native HTTP engine, which never retries (lm15 has no retry
    policy; it only re-sends once when writing to a stale pooled connection fails), and
    num_retries=0 turns off DSPy's own retry loop. max_retries is deliberately NOT passed: in
    3.4 it is not a native client setting, so under engine="auto" it silently reroutes the call
    through LiteLLM and the OpenAI SDK (whose client has its own retry policy), and under
    engine="lm15" it is refused with LMUnsupportedFeatureError. Pinning lm15 also means a
    request the native engine cannot carry fails loudly instead of falling back to LiteLLM.
    """
    endpoint = {"api_base": base_url} if base_url else {}  # else OpenAI's own endpoint
    lm = dspy.LM(f"openai/{model}", api_key=api_key, timeout=timeout_s, cache=False,
                 num_retries=0, engine="lm15", **endpoint)
    return LMHandle(lm=lm, provider=OPENAI_COMPATIBLE, model=model)


def build_lm(model: str, api_key: str, base_url: str, timeout_s: float) -> LMHandle:
    """The offline writer when no API key is set (or model is "offline"), else the endpoint."""
    if not api_key or model == OFFLINE:
        return offline_lm()
    return openai_compatible_lm(model, api_key, base_url, timeout_s)
