"""The gateway's middleware: bound the requests in flight, turn every failure into the
contract's JSON error (never a traceback), and count every answer by route and status."""
from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from aiohttp import web

from actors.bridge import RemoteFailure
from memesys.config import GatewayConfig
from memesys.errors import ErrorCode
from memesys.http.metrics import Metrics
from memesys.http.responses import error, failure_error

log = logging.getLogger("memesys.http")

# aiohttp's own HTTP errors (an unknown route, a method, a body over client_max_size).
_HTTP_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED,
               413: ErrorCode.BODY_TOO_LARGE, 415: ErrorCode.UNSUPPORTED_MEDIA_TYPE}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Guard:
    """The one middleware; ``in_flight`` is the requests being served right now."""

    def __init__(self, cfg: GatewayConfig, metrics: Metrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.in_flight = 0
        metrics.gauge("memesys_gateway_in_flight", "requests being served",
                      lambda: self.in_flight)

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Handler) -> web.StreamResponse:
        """Bound requests in flight; turn every failure into a JSON error, never a traceback."""
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource else "unmatched"
        if self.in_flight >= self.cfg.max_in_flight:
            response: web.StreamResponse = error(ErrorCode.OVERLOADED,
                                                 "the gateway is shedding load; retry later")
        else:
            self.in_flight += 1
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = self._http_error(request, exc)
            except RemoteFailure as exc:
                response = failure_error(exc.failure, f"{request.method} {request.path}")
            except Exception:
                log.exception("unexpected error serving %s %s", request.method, request.path)
                response = error(ErrorCode.INTERNAL)
            finally:
                self.in_flight -= 1
        self.metrics.count("memesys_http_requests_total", "HTTP requests by route and status",
                           method=request.method, route=route, status=str(response.status))
        self.metrics.observe("memesys_http_request_seconds", "HTTP request latency",
                             time.perf_counter() - started, route=route)
        return response

    def _http_error(self, request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
        """aiohttp's HTTP errors as contract errors; a status the contract has no code for is
        a server fault (500 ``internal``), logged."""
        if exc.status < 400:  # a redirect is an answer, not an error
            return web.Response(status=exc.status, headers=exc.headers)
        code = _HTTP_CODES.get(exc.status)
        if code is None:
            log.error("%s %s: aiohttp answered %d %s (answered internal)", request.method,
                      request.path, exc.status, exc.reason)
            return error(ErrorCode.INTERNAL)
        text = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else None
        allow = exc.headers.get("Allow")
        if code is ErrorCode.BODY_TOO_LARGE:
            text = f"the body must be at most {self.cfg.max_body_bytes} bytes"
        elif code is ErrorCode.METHOD_NOT_ALLOWED:
            text = f"{request.method} is not allowed here (allowed: {allow or 'none'})"
        return error(code, text, headers={"Allow": allow} if allow else None)
