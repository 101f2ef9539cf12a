"""The access log: one line per request on ``memesys.access``, at INFO.

aiohttp calls an access logger once a response has been sent (the middleware's own refusals,
413, 415, 503, and aiohttp's 404/405 included), so the duration and the body's size are what
the client got. A line has the method, the path (never the query string), the route, the
status, ``duration_ms``, ``bytes`` and the request's trace id (its ``X-Trace-Id``); never a
header or the body, so never a topic.
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from memesys.http.middleware import ROUTE
from memesys.telemetry.logs import ACCESS

MAX_PATH_CHARS = 256  # a client chooses the path: bound what one line may carry


class AccessLog(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        fields: dict[str, object] = {
            "method": request.method[:16],
            "path": request.path[:MAX_PATH_CHARS],
            "status": response.status,
            "duration_ms": round(time * 1000, 2),
            "bytes": response.body_length,
        }
        route = request.get(ROUTE)  # none: aiohttp answered a request it could not parse
        if route is not None:
            fields["route"] = route
        trace_id = response.headers.get("X-Trace-Id")
        if trace_id:
            fields["trace_id"] = trace_id
        self.logger.info(
            "%s %s %d", fields["method"], fields["path"], response.status, extra=fields
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def options() -> dict[str, object]:
    """``web.AppRunner`` settings that write the access log."""
    return {"access_log": logging.getLogger(ACCESS), "access_log_class": AccessLog}
