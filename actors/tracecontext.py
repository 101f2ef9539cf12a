"""W3C trace context across actor processes: what a sender puts in a request's envelope, and
the span of a request being handled, a child of the sender's.

The runtime knows nothing of how a process exports its spans: it uses the OpenTelemetry API
only, and the application sets a provider up in each process (or not). Without one, tracing
is off: no context is injected (:attr:`~actors.messages.Request.trace_context` stays None) and
no span is made, so the cost is one check per message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

Carrier = tuple[tuple[str, str], ...]
"""A W3C carrier (``traceparent``, ``tracestate``) as a tuple of pairs: frozen, picklable."""

_cache: tuple[trace.TracerProvider, trace.Tracer] | None = None


def enabled() -> bool:
    """Whether this process has a tracer provider (the application set one up)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _tracer() -> trace.Tracer:
    """The runtime's tracer of the current provider (looked up again after a fork replaced
    it: a tracer kept from before would be the parent's)."""
    global _cache
    provider = trace.get_tracer_provider()
    if _cache is None or _cache[0] is not provider:
        _cache = (provider, provider.get_tracer("actors"))
    return _cache[1]


def carrier() -> Carrier | None:
    """The current trace context to send along (None: tracing is off, or no span is current)."""
    if not enabled() or not trace.get_current_span().get_span_context().is_valid:
        return None
    fields: dict[str, str] = {}
    propagate.inject(fields)
    return tuple(fields.items()) or None


def extracted(carried: Carrier | None) -> context.Context:
    """The context a carrier names (an empty one, a new trace's, when it names none)."""
    return propagate.extract(dict(carried)) if carried else context.Context()


@contextmanager
def handling(
    message: str, actor: str, correlation_id: str, carried: Carrier | None
) -> Iterator[trace.Span | None]:
    """The span of one request handled by ``actor``, a child of the sender's span when the
    request carried its context, current for the block (and every task and thread it starts);
    None while tracing is off."""
    if not enabled():
        yield None
        return
    with _tracer().start_as_current_span(
        f"handle {message}",
        context=extracted(carried),
        kind=SpanKind.SERVER,
        attributes={"actors.actor": actor, "actors.correlation_id": correlation_id},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def failed(span: trace.Span | None, code: str, message: str) -> None:
    """Mark ``span`` as the handling of a request answered with failure ``code``."""
    if span is not None:
        span.set_attribute("actors.failure", code)
        span.set_status(Status(StatusCode.ERROR, f"{code}: {message}"[:200]))
