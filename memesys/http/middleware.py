"""The gateway's middleware: read the body within its deadline, admit the request (or refuse
it with a computed ``Retry-After``), turn every failure into the contract's JSON error (never
a traceback), and count every answer by route and status.

The order, for each request whose head has arrived:

1. an unknown route or a wrong method is answered at once (404, 405 with ``Allow``);
2. the door: under ``/v1/`` and on ``/metrics``, the token when ``gateway.auth`` requires one
   (401, :mod:`memesys.http.auth`), then under ``/v1/`` the client's own request limit
   (429 + ``Retry-After``, :mod:`memesys.http.client_limits`), before any body is read;
3. ``/healthz``, ``/readyz`` and ``/metrics`` are served at once: no admission control, so
   liveness, readiness and metrics answer however loaded the gateway is; so are task event
   streams, bounded on their own (:mod:`memesys.http.progress`);
4. a ``POST`` must declare ``Content-Type: application/json`` (415 otherwise, a missing one
   too: a web page can send ``text/plain``, a form or a typeless body to a local daemon
   without asking, but not JSON);
5. the body is read, at most ``max_body_bytes`` (413) within ``body_timeout_s`` of the head
   (408, and the connection is closed); a body that cannot be decoded (a false
   ``Content-Encoding``) is 400; a client that hangs up mid-body gets nothing and leaves no
   traceback (counted with status 499);
6. only then is the request admitted: it counts against ``max_in_flight`` (or waits in the
   bounded queue, or is refused 503 + ``Retry-After``, see :mod:`memesys.http.admission`).

A request aiohttp cannot parse at all (a bad request line or header, a line over 8,190 bytes)
never reaches the middleware: aiohttp answers it with its own plain-text 400.
:data:`MALFORMED_HTTP` keeps aiohttp from logging that as an error with a traceback (the fault
is the client's): one DEBUG line instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from actors.bridge import RemoteFailure
from memesys.config import GatewayConfig
from memesys.errors import ErrorCode, MemesysError
from memesys.http.admission import Lane, Refused
from memesys.http.auth import Auth, guarded
from memesys.http.client_limits import ClientLimits
from memesys.http.connections import ConnectionWatch
from memesys.http.metrics import Metrics
from memesys.http.responses import error, exception_error, failure_error
from memesys.http.validation import shown

log = logging.getLogger("memesys.http")

# aiohttp's own HTTP errors (an unknown route, a method, a body over client_max_size).
_HTTP_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.BODY_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
}
# Served whatever the load: never queued, never refused by admission control.
OPERATIONS = frozenset({"/healthz", "/readyz", "/metrics"})
# Open as long as their task runs: bounded by their own limit (gateway.max_event_streams),
# not held against max_in_flight.
STREAMS = frozenset({"/v1/tasks/{id}/events"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON_TYPE = "application/json"
CLIENT_GONE = 499  # nginx's "client closed request": only in metrics, nobody is there to read it
ROUTE = web.RequestKey("route", str)  # the request's route pattern, once the middleware has it

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MalformedHttp(logging.Filter):
    """On aiohttp's server logger: a request that could not be parsed is the client's fault,
    logged at DEBUG, not an error with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, BadHttpMessage):
            return True
        log.debug("a request aiohttp could not parse (answered 400): %s", str(exc.message)[:200])
        return False


MALFORMED_HTTP = MalformedHttp()


def quiet_malformed_http() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if MALFORMED_HTTP not in server_log.filters:
        server_log.addFilter(MALFORMED_HTTP)


class Guard:
    """The one middleware; ``lane`` admits every request whose body has been read; ``auth``
    and ``client_limits`` are the door (``client_limits``: None without a per-client limit)."""

    def __init__(
        self,
        cfg: GatewayConfig,
        metrics: Metrics,
        auth: Auth,
        client_limits: ClientLimits | None = None,
    ) -> None:
        if cfg.client_rate_per_minute and client_limits is None:
            raise ValueError("gateway.client_rate_per_minute needs the shared client limits")
        self.cfg = cfg
        self.metrics = metrics
        self.auth, self.client_limits = auth, client_limits
        self.lane = Lane("gateway", cfg.max_in_flight, cfg.max_queue, cfg.queue_timeout_s)
        self.reading = 0
        self.connections = ConnectionWatch(
            cfg.header_timeout_s, on_close=lambda: self._closed("header_timeout")
        )
        metrics.gauge(
            "memesys_gateway_in_flight",
            "requests being served (bodies read)",
            lambda: self.lane.active,
        )
        metrics.gauge(
            "memesys_gateway_queued", "requests waiting for a slot", lambda: self.lane.queued
        )
        metrics.gauge(
            "memesys_gateway_reading", "requests whose body is being read", lambda: self.reading
        )
        quiet_malformed_http()

    @property
    def in_flight(self) -> int:
        return self.lane.active

    def _closed(self, reason: str) -> None:
        self.metrics.count(
            "memesys_http_connections_closed_total",
            "connections the gateway closed, by reason",
            reason=reason,
        )

    def refused(self, refusal: Refused) -> web.Response:
        """503 ``overloaded`` with the lane's computed Retry-After."""
        self.metrics.count(
            "memesys_gateway_refused_total",
            "requests refused by admission control, by lane and reason",
            lane=refusal.lane,
            reason=refusal.reason,
        )
        return error(
            ErrorCode.OVERLOADED,
            "the daemon is at capacity; retry later",
            retry_after=refusal.retry_after,
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Body, admission, errors and metrics for every request (see the module's doc)."""
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource else "unmatched"
        request[ROUTE] = route  # for the access line (memesys.http.access)
        connection = request.protocol
        self.connections.busy(connection)
        try:
            response = await self._serve(request, handler, route)
        finally:
            self.connections.idle(connection)
        status = str(response.status) if response is not None else str(CLIENT_GONE)
        self.metrics.count(
            "memesys_http_requests_total",
            "HTTP requests by route and status",
            method=request.method,
            route=route,
            status=status,
        )
        self.metrics.observe(
            "memesys_http_request_seconds",
            "HTTP request latency",
            time.perf_counter() - started,
            route=route,
        )
        return response if response is not None else web.Response(status=CLIENT_GONE)

    async def _serve(
        self, request: web.Request, handler: Handler, route: str
    ) -> web.StreamResponse | None:
        if request.match_info.http_exception is None and guarded(route):
            refusal = await self._door(request, route)
            if refusal is not None:
                return refusal
        if request.match_info.http_exception is not None or route in OPERATIONS | STREAMS:
            return await self._call(request, handler)
        if request.method in BODY_METHODS:
            refusal = self._media_type_refusal(request)
            if refusal is not None:
                return refusal
        if request.body_exists:
            problem = await self._read_body(request)
            if problem is not True:
                return problem
        try:
            async with self.lane.slot():
                return await self._call(request, handler)
        except Refused as refusal:
            return self.refused(refusal)

    async def _door(self, request: web.Request, route: str) -> web.Response | None:
        """The answer that keeps this request out (401, 429, or 503 when Redis cannot tell),
        or None to let it in."""
        try:
            client = await self.auth.client(request)
        except MemesysError as exc:
            return exception_error(exc, f"{request.method} {request.path}")
        if isinstance(client, web.Response):
            return client
        if self.client_limits is None or route in OPERATIONS:
            return None
        return await self.client_limits.refusal(client)

    async def _call(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The handler's answer, every failure as a JSON error."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return self._http_error(request, exc)
        except RemoteFailure as exc:
            return failure_error(exc.failure, f"{request.method} {request.path}")
        except MemesysError as exc:
            return exception_error(exc, f"{request.method} {request.path}")
        except Refused as refusal:  # a lane inside the handler (memes being made)
            return self.refused(refusal)
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            return error(ErrorCode.INTERNAL)

    def _media_type_refusal(self, request: web.Request) -> web.Response | None:
        """415 unless the body is declared ``application/json`` (UTF-8, if a charset is
        given). A missing Content-Type is refused too: browsers send a body without one (a
        Blob, an ArrayBuffer) cross-origin without asking first, as they do text/plain."""
        if "Content-Type" not in request.headers:
            return error(
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                "the body must be declared Content-Type: application/json",
            )
        if request.content_type != JSON_TYPE:
            return error(
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                f"the body must be application/json, not {shown(request.content_type)}",
            )
        charset = request.charset or "utf-8"
        if charset.lower() != "utf-8":
            return error(
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                f"the body must be UTF-8, not {shown(charset)}",
            )
        return None

    async def _read_body(self, request: web.Request) -> web.StreamResponse | Literal[True] | None:
        """Read the whole body (kept by aiohttp for the handler's ``read()``): True when read,
        else the answer (None: the client is gone)."""
        limit = self.cfg.max_body_bytes
        if (request.content_length or 0) > limit:
            return error(ErrorCode.BODY_TOO_LARGE, f"the body must be at most {limit} bytes")
        self.reading += 1
        try:
            async with asyncio.timeout(self.cfg.body_timeout_s):
                await request.read()
            return True
        except TimeoutError:
            return await self._body_timed_out(request)
        except web.HTTPRequestEntityTooLarge:  # a chunked or decompressed body past the limit
            return error(ErrorCode.BODY_TOO_LARGE, f"the body must be at most {limit} bytes")
        except (ConnectionError, web.RequestPayloadError) as exc:
            if _gone(request) or isinstance(exc, ConnectionError):
                log.debug(
                    "%s %s: the client hung up while sending its body (%s)",
                    request.method,
                    request.path,
                    type(exc).__name__,
                )
                return None
            encoding = request.headers.get("Content-Encoding")
            return await self._answer_and_close(
                request,
                error(
                    ErrorCode.MALFORMED_JSON,
                    "the body could not be read"
                    + (
                        f": it is not valid {shown(encoding)} as its Content-Encoding says"
                        if encoding
                        else ""
                    ),
                ),
            )
        finally:
            self.reading -= 1

    async def _body_timed_out(self, request: web.Request) -> web.StreamResponse | None:
        """408, sent at once, then the connection is closed (it is not drained: a client that
        trickles its body would hold it as long again)."""
        self._closed("body_timeout")
        return await self._answer_and_close(
            request,
            error(
                ErrorCode.REQUEST_TIMEOUT,
                f"the body did not arrive within {self.cfg.body_timeout_s:g} s",
            ),
        )

    @staticmethod
    async def _answer_and_close(
        request: web.Request, response: web.Response
    ) -> web.StreamResponse | None:
        """Send ``response`` now and close the connection, rather than let aiohttp drain the
        rest of a body that cannot be read (or would take as long again)."""
        response.force_close()
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            return None
        finally:
            request.protocol.force_close()
        return response

    def _http_error(self, request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
        """aiohttp's HTTP errors as contract errors; a status the contract has no code for is
        a server fault (500 ``internal``), logged."""
        if exc.status < 400:  # a redirect is an answer, not an error
            return web.Response(status=exc.status, headers=exc.headers)
        code = _HTTP_CODES.get(exc.status)
        if code is None:
            log.error(
                "%s %s: aiohttp answered %d %s (answered internal)",
                request.method,
                request.path,
                exc.status,
                exc.reason,
            )
            return error(ErrorCode.INTERNAL)
        text = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else None
        allow = exc.headers.get("Allow")
        if code is ErrorCode.BODY_TOO_LARGE:
            text = f"the body must be at most {self.cfg.max_body_bytes} bytes"
        elif code is ErrorCode.METHOD_NOT_ALLOWED:
            text = f"{shown(request.method, 16)} is not allowed here (allowed: {allow or 'none'})"
        return error(code, text, headers={"Allow": allow} if allow else None)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
