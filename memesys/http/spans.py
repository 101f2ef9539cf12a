"""A span for every HTTP request the gateway answers, the root of everything it causes.

An incoming W3C ``traceparent`` (and ``tracestate``) is honoured: the request's span is its
child, in its trace, so a meme's ``trace_id`` is the caller's. Without a tracer provider
(tracing off) no span is made; an incoming context is still made current, so the meme takes its
trace id all the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from memesys.telemetry import tracing

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TRACEPARENT = "traceparent"


def _route(request: web.Request) -> str:
    """The route's template (``/v1/memes/{id}``), never the raw path: span names stay few."""
    info = request.match_info
    route = info.route if info is not None else None
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not tracing.enabled():
        if TRACEPARENT not in request.headers:
            return await handler(request)
        token = context.attach(propagate.extract(request.headers))
        try:
            return await handler(request)
        finally:
            context.detach(token)
    route = _route(request)
    with tracing.tracer("memesys.http").start_as_current_span(
        f"{request.method} {route}",
        context=propagate.extract(request.headers),
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": request.method,
            "http.route": route,
            "url.path": request.path,
            "url.scheme": request.scheme,
        },
    ) as span:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _answered(span, exc.status)
            raise
        _answered(span, response.status)
        return response


def _answered(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
