"""Build the language models the meme program runs on: the offline writer or an OpenAI-compatible
endpoint, one per distinct model of the [llm] section (:func:`stage_handles`). Both are
uncached; the endpoint's transport (memesys.llm) is the daemon's one retry layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import dspy

from memesys.config import LLMConfig
from memesys.llm.transport import AsyncHardenedTransport, HardenedTransport, Policy
from memesys.offline.lm import MODEL, PROVIDER, AsyncOfflineLM, OfflineLM

OFFLINE = "offline"
OPENAI_COMPATIBLE = "openai-compatible"


@dataclass(frozen=True)
class LMHandle:
    """An LM plus the names telemetry and responses report for it, and the transport of its
    calls (None: not the project's, e.g. the offline writer: never limited)."""

    lm: dspy.LM
    provider: str
    model: str
    transport: HardenedTransport | None = None


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

    The transport is the project's :class:`~memesys.llm.transport.HardenedTransport` (the
    openai SDK's pooled async client with max_retries=0, deadline-aware retries honouring
    Retry-After, hedging), passed to DSPy as a custom engine: DSPy's async path (``acall``)
    awaits it on the caller's loop; its sync face serves synchronous callers.
    num_retries=0 turns DSPy's own retry loop off, so the transport's is the only one. Each
    attempt is bounded by min(timeout_s, time left before the request's deadline).
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
    return LMHandle(lm=lm, provider=OPENAI_COMPATIBLE, model=model, transport=transport)


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


# The [llm] key naming each stage's model; empty means [llm] model.
STAGE_MODEL_KEYS: Mapping[str, str] = {
    "select": "select_model",
    "write": "write_model",
    "select_write": "write_model",  # the fused call writes the captions
    "appropriateness": "verify_model",
    "factuality": "verify_model",
    "instruction_following": "verify_model",
    "score": "score_model",
    "refine": "refine_model",
}


def stage_handles(
    llm: LLMConfig,
    stage_timeout_s: float,
    redis_url: str = "",
    key_prefix: str = "memesys",
    processes: int = 1,
) -> Callable[[str], LMHandle]:
    """handle_for(stage) from the [llm] section: one handle per distinct model, each attempt
    bounded by min(llm.timeout_s, stage_timeout_s, time left before the request's deadline),
    at most llm.max_attempts attempts per call, through each model's circuit breaker and rate
    limits, shared through ``redis_url`` when given by ``processes`` processes (memesys.llm)."""
    timeout_s = min(llm.timeout_s, stage_timeout_s)
    policy = Policy(
        timeout_s=timeout_s,
        max_attempts=llm.max_attempts,
        max_connections=llm.max_connections,
        breaker_failures=llm.breaker_failures,
        breaker_reset_s=llm.breaker_reset_s,
        rate_limit_rps=llm.rate_limit_rps,
        rate_limit_tpm=llm.rate_limit_tpm,
        daily_token_budget=llm.daily_token_budget,
        prices=llm.prices,
        max_concurrent_writes=llm.max_concurrent_writes,
        max_concurrent_judgements=llm.max_concurrent_judgements,
        hedge_quantile=llm.hedge_quantile,
        hedge_straggler_quantile=llm.hedge_straggler_quantile,
        hedge_budget=llm.hedge_budget,
        redis_url=redis_url,
        key_prefix=key_prefix,
        processes=processes,
    )
    fallbacks = tuple(
        m.strip() for m in llm.fallback_models.split(",") if m.strip() and m.strip() != OFFLINE
    )
    built: dict[str, LMHandle] = {}

    def handle_for(stage: str) -> LMHandle:
        model = getattr(llm, STAGE_MODEL_KEYS[stage]) or llm.model
        if model not in built:
            built[model] = build_lm(model, llm.api_key, llm.base_url, timeout_s, policy, fallbacks)
        return built[model]

    return handle_for
