"""The span of one LLM call, after the OpenTelemetry gen_ai semantic conventions.

One ``chat <model>`` client span per call DSPy makes (its attempts, hedges and fallbacks inside
it): ``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``, and once
answered ``gen_ai.response.model`` and the tokens (``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``); the retry layer adds ``memesys.llm.attempts``,
``memesys.llm.hedges`` and ``memesys.llm.outcome`` (``ok`` or the failure's kind, also
``error.type``). The counts are kept in a context variable of the call's task, which the hedge's
task shares. Neither prompts nor answers are recorded: they may be personal.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from memesys.telemetry import tracing

PROVIDER = "openai"  # every endpoint speaks the OpenAI API (gen_ai.provider.name's value)
OK = "ok"


@dataclass
class _Tally:
    attempts: int = 0
    hedges: int = 0


_tally: contextvars.ContextVar[_Tally | None] = contextvars.ContextVar("llm_tally", default=None)


@contextmanager
def chat(model: str, base_url: str) -> Iterator[trace.Span | None]:
    """The span of one call to ``model`` (None while tracing is off): current for the block."""
    if not tracing.enabled():
        yield None
        return
    where = urlsplit(base_url)
    tally = _Tally()
    token = _tally.set(tally)
    try:
        with tracing.tracer("memesys.llm").start_as_current_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": PROVIDER,
                "gen_ai.request.model": model,
                "server.address": where.hostname or "",
                "server.port": where.port or (443 if where.scheme == "https" else 80),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            finally:
                span.set_attribute("memesys.llm.attempts", tally.attempts)
                span.set_attribute("memesys.llm.hedges", tally.hedges)
    finally:
        _tally.reset(token)


def attempted() -> None:
    """An attempt is sent (a retry or a fallback's included)."""
    tally = _tally.get()
    if tally is not None:
        tally.attempts += 1


def hedged() -> None:
    """A hedge is sent beside an attempt."""
    tally = _tally.get()
    if tally is not None:
        tally.hedges += 1


def answered(model: str, input_tokens: int, output_tokens: int) -> None:
    """The call under way was answered by ``model`` for these tokens."""
    if _tally.get() is None:  # tracing off: no call span
        return
    span = trace.get_current_span()
    span.set_attribute("gen_ai.response.model", model)
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)


def ended(span: trace.Span | None, outcome: str) -> None:
    """How the call ended: ``ok`` or the kind of its failure."""
    if span is None:
        return
    span.set_attribute("memesys.llm.outcome", outcome)
    if outcome != OK:
        span.set_attribute("error.type", outcome)
        span.set_status(Status(StatusCode.ERROR))
