"""Traces: one OpenTelemetry tracer provider per process, configured by the standard variables.

``OTEL_TRACES_EXPORTER``: ``none`` (the default: no provider is made and every span is the
API's no-op), ``console`` (spans printed to stdout) or ``otlp`` (OTLP over HTTP/protobuf to
``OTEL_EXPORTER_OTLP_ENDPOINT``, or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SERVICE_NAME``
names the service (default ``memesys``); ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``
choose the sampler, ``OTEL_BSP_*`` tune the batches. The SDK reads them itself; this module only
refuses what it cannot honour (an unknown exporter, a protocol other than ``http/protobuf``)
before the daemon starts anything (:func:`check`).

Every process sets its own provider up after it has started (:func:`start`: the daemon once its
actor system has forked, each actor in ``on_start``), because Thespian forks actor processes: a
provider made before the fork would carry the parent's pid in its resource and a batch thread
that the child does not have. Spans leave in batches from the processor's own thread, never on
the request's path, and :func:`stop` flushes what is left when the process stops.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import format_span_id, format_trace_id
from opentelemetry.util._once import Once
from opentelemetry.util.types import AttributeValue

log = logging.getLogger("memesys.telemetry.tracing")

NONE, CONSOLE, OTLP = "none", "console", "otlp"
EXPORTERS = (NONE, CONSOLE, OTLP)
PROTOCOL = "http/protobuf"  # the one OTLP protocol the installed exporter speaks
DEFAULT_SERVICE = "memesys"
FLUSH_TIMEOUT_S = 2.0  # what a stopping process waits for its last spans, at most


class TracingError(ValueError):
    """The OTEL_* variables ask for something this build cannot do."""


@dataclass(frozen=True)
class TraceSettings:
    """What the environment asks of tracing (the rest the SDK reads itself)."""

    exporter: str

    @property
    def enabled(self) -> bool:
        return self.exporter != NONE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TraceSettings:
        env = os.environ if env is None else env
        exporter = env.get("OTEL_TRACES_EXPORTER", NONE).strip().lower() or NONE
        if exporter not in EXPORTERS:
            raise TracingError(
                f"OTEL_TRACES_EXPORTER={exporter!r}: one of {', '.join(EXPORTERS)} "
                "(one exporter: a list is not supported)"
            )
        if exporter == OTLP:
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or PROTOCOL
            ).strip()
            if protocol != PROTOCOL:
                raise TracingError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: only {PROTOCOL} is supported "
                    "(the OTLP/HTTP exporter is the one installed)"
                )
        return cls(exporter)


def check() -> TraceSettings:
    """This environment's settings, or :class:`TracingError` saying what is wrong (the daemon
    exits 2)."""
    return TraceSettings.from_env()


@dataclass(frozen=True)
class _Installed:
    provider: TracerProvider
    pid: int


_installed: _Installed | None = None


def start(role: str) -> bool:
    """Set this process's tracer provider up as the environment asks (``role``: what this
    process is, e.g. ``gateway`` or an actor's name, a resource attribute); False when tracing
    is off. Idempotent in a process; a provider inherited through a fork is replaced."""
    global _installed
    settings = TraceSettings.from_env()
    if not settings.enabled:
        return False
    pid = os.getpid()
    if _installed is not None and _installed.pid == pid:
        return True
    # shutdown_on_exit off: :func:`stop` is the one shutdown, bounded (the SDK's at exit is not)
    provider = TracerProvider(resource=_resource(role, pid), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
    if _installed is not None:
        # Forked from a process that had one: its provider is the parent's, not ours. The API
        # sets its global once per process; a fork copies that "once" along.
        trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace.set_tracer_provider(provider)
    _installed = _Installed(provider, pid)
    return True


def stop() -> None:
    """Export what is left and stop the batch thread (a process that is stopping)."""
    global _installed
    installed, _installed = _installed, None
    if installed is None or installed.pid != os.getpid():
        return
    # The SDK's shutdown exports what is queued, each batch retried up to the exporter's
    # timeout: with the collector away that is far longer than a stop may take. It runs
    # beside, waited for FLUSH_TIMEOUT_S at most; what is left then is lost with the process.
    stopping = threading.Thread(
        target=installed.provider.shutdown, name="tracing-shutdown", daemon=True
    )
    stopping.start()
    stopping.join(FLUSH_TIMEOUT_S)
    if stopping.is_alive():
        log.warning(
            "tracing: the last spans were not exported within %g s (is the collector at "
            "OTEL_EXPORTER_OTLP_ENDPOINT up?); they are dropped",
            FLUSH_TIMEOUT_S,
        )


def _resource(role: str, pid: int) -> Resource:
    resource = Resource.create({"process.pid": pid, "memesys.process": role})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE}))
    return resource


def _exporter(settings: TraceSettings) -> SpanExporter:
    if settings.exporter == CONSOLE:
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*


def enabled() -> bool:
    """Whether this process has a tracer provider (tracing is on and :func:`start` ran)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


_tracers: dict[str, tuple[trace.TracerProvider, trace.Tracer]] = {}


def tracer(name: str) -> trace.Tracer:
    """The tracer ``name`` of this process's provider (the API's no-op one while tracing is
    off). Looked up again when the provider changed: a tracer kept from before a fork would
    be the parent's."""
    provider = trace.get_tracer_provider()
    known = _tracers.get(name)
    if known is None or known[0] is not provider:
        known = _tracers[name] = (provider, provider.get_tracer(name))
    return known[1]


@contextmanager
def span(
    name: str, attributes: Mapping[str, AttributeValue] | None = None, scope: str = "memesys"
) -> Iterator[trace.Span | None]:
    """A span ``name`` (a child of the current one), current for the block; None and no work
    while tracing is off."""
    if not enabled():
        yield None
        return
    with tracer(scope).start_as_current_span(name, attributes=attributes) as made:
        yield made


def current_trace_id() -> str:
    """The trace id of the current span in 32 hex digits ("" when there is none: tracing off
    and no incoming trace context)."""
    context = trace.get_current_span().get_span_context()
    return format_trace_id(context.trace_id) if context.is_valid else ""


def current_traceparent() -> str:
    """The W3C ``traceparent`` of the current span ("" when there is none, or tracing is off:
    an incoming context alone is the caller's, not a span of ours)."""
    span = trace.get_current_span()
    context = span.get_span_context()
    if not context.is_valid or not span.is_recording():
        return ""
    return (
        f"00-{format_trace_id(context.trace_id)}-{format_span_id(context.span_id)}"
        f"-{int(context.trace_flags):02x}"
    )
