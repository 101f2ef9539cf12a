"""Build the language model the meme program runs on: the offline writer or an OpenAI-compatible
endpoint. Both are uncached; the endpoint's transport (memesys.llm) is the daemon's one retry layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import dspy

from memesys.llm.transport import AsyncHardenedTransport, HardenedTransport, Policy
from memesys.offline.lm import MODEL, PROVIDER, AsyncOfflineLM, OfflineLM

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
    lm = dspy.LM(
        model=f"{PROVIDER}/{MODEL}",
        engine=OfflineLM(),
        async_engine=AsyncOfflineLM(),
        cache=False,
        num_retries=0,
    )
    return LMHandle(lm=lm, provider=PROVIDER, model=MODEL)


def openai_compatible_lm(
    model: str,
    api_key: str,
    base_url: str,
    timeout_s: float,
    policy: Policy | None = None,
    fallbacks: tuple[str, ...] = (),
) -> LMHandle:
    """An OpenAI-compatible endpoint behind the daemon's one retry layer (memesys.llm).

    The transport is the project's :class:`~memesys.llm.transport.HardenedTransport` (pooled
    keep-alive HTTP that never retries, deadline-aware retries honouring Retry-After), passed to
    DSPy as a custom engine; num_retries=0 turns DSPy's own retry loop off, so the transport's is
    the only one. Each attempt is bounded by min(timeout_s, time left before the request's
    deadline).
    """
    policy = replace(policy or Policy(), timeout_s=timeout_s)
    transport = HardenedTransport(model, api_key, base_url, policy, fallbacks=fallbacks)
    lm = dspy.LM(
        f"openai/{model}",
        engine=transport,
        async_engine=AsyncHardenedTransport(transport),
        cache=False,
        num_retries=0,
    )
    return LMHandle(lm=lm, provider=OPENAI_COMPATIBLE, model=model)


def build_lm(
    model: str,
    api_key: str,
    base_url: str,
    timeout_s: float,
    policy: Policy | None = None,
    fallbacks: tuple[str, ...] = (),
) -> LMHandle:
    """The offline writer when no API key is set (or model is "offline"), else the endpoint
    (with ``fallbacks``: models tried in order when this one cannot answer)."""
    if not api_key or model == OFFLINE:
        return offline_lm()
    return openai_compatible_lm(model, api_key, base_url, timeout_s, policy, fallbacks)
