"""A local OTLP/HTTP trace receiver: what a collector is to the daemon, for tests and benchmarks.

It accepts ``POST /v1/traces`` with an ``ExportTraceServiceRequest`` in protobuf (gzip or not),
as the SDK's OTLP/HTTP exporter sends it, on 127.0.0.1, from a thread of the test's process,
and keeps every span it decodes (:class:`ReceivedSpan`), with the ``process.pid`` of the
resource that sent it. Bodies are bounded; anything else is answered 4xx.
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from memesys.testing.ports import free_port

MAX_BODY_BYTES = 32 * 2**20
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, ids in hex (``parent_span_id`` "" for a root)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    pid: int | None
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which in ("string_value", "bool_value", "int_value", "double_value", "bytes_value"):
        return getattr(value, which)
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        pid = _attributes(resource_spans.resource.attributes).get("process.pid")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                        span.name,
                        span.kind,
                        pid,
                        _attributes(span.attributes),
                        tuple((e.name, _attributes(e.attributes)) for e in span.events),
                    )
                )
    return spans


class OTLPReceiver:
    """``start()`` it, point ``OTEL_EXPORTER_OTLP_ENDPOINT`` at :attr:`url`, read :attr:`spans`
    (or :meth:`wait_for`), ``stop()`` it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spans: list[ReceivedSpan] = []
        self.exports = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> OTLPReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if self.path != "/v1/traces" or not 0 < length <= MAX_BODY_BYTES:
                    receiver._refuse()
                    self.send_error(404 if self.path != "/v1/traces" else 413)
                    return
                body = self.rfile.read(length)
                try:
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    spans = decode(body)
                except Exception:
                    receiver._refuse()
                    self.send_error(400, "not an ExportTraceServiceRequest")
                    return
                receiver._received(spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", PROTOBUF)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a request line per export would drown the test's output

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _received(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self.spans.extend(spans)
            self.exports += 1

    def _refuse(self) -> None:
        with self._lock:
            self.refused += 1

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def count(self) -> int:
        with self._lock:
            return len(self.spans)

    def wait_for(self, trace_id: str, settled_s: float, timeout_s: float) -> list[ReceivedSpan]:
        """The spans of ``trace_id`` once none has come for ``settled_s`` (at most
        ``timeout_s``; the caller asserts what it needs of them)."""
        deadline = time.monotonic() + timeout_s
        seen, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = len(self.of_trace(trace_id))
            if now != seen:
                seen, since = now, time.monotonic()
            elif now and time.monotonic() - since >= settled_s:
                break
            time.sleep(0.05)
        return self.of_trace(trace_id)
