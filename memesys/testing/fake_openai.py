"""A fake OpenAI-compatible chat endpoint for tests and benchmarks.

It answers ``POST /v1/chat/completions`` in OpenAI's ``chat.completion`` shape with text written
by the offline writer (:mod:`memesys.offline.writer`) from the very messages it received, so
whichever DSPy signature asked gets exactly the ``[[ ## field ## ]]`` sections (or JSON) its
adapter parses. The body is read back into a canonical request with DSPy's own reader,
``dspy.lm15.request_from_openai_chat`` (the inverse of what ``dspy.LM(engine="lm15")`` writes),
and handed to ``offline_writer.complete``: the same function the offline LM runs, so any
signature the writer learns is answered here too.

Latency (fixed or drawn from a seeded distribution), hangs and faults are injectable
(:class:`FakeConfig`, mutable while running): HTTP errors (429 with ``Retry-After`` and
``retry-after-ms``, 5xx), storms of errors for a period, connection resets, malformed 200s (a
body that is not JSON, or JSON without ``choices``), late answers past a client's timeout, each
for every call, one call in N, only the requests for one model or only those whose messages
contain a text. Counters per model (``attempts_by_model``, ``calls_by_model``,
``failures_by_model``) prove how many attempts each call made.
Run it in the caller's loop (``await fake.start()`` / ``async with``), in a daemon thread with a
loop of its own (``fake.start_in_thread()`` / ``with``), or as a process next to the daemon::

    python -m memesys.testing.fake_openai --port 8099 --latency 0.1
    OPENAI_BASE_URL=http://127.0.0.1:8099/v1 OPENAI_API_KEY=test-key memesys ...

It binds 127.0.0.1 only, on a free port unless one is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import socket
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from dspy.lm15 import LM15Error, request_from_openai_chat

from memesys.offline.lm import complete

HOST = "127.0.0.1"
DEFAULT_MODEL = "fake-model"
DEFAULT_API_KEY = "test-key"

# A prompt as DSPy's ChatAdapter writes it for SelectFormat, which the offline writer answers:
# the chat body tests and benchmarks send when any valid completion will do.
_SELECT_SYSTEM = (
    "Your input fields are:\n1. `topic` (str): what the meme is about\n"
    "2. `catalogue` (str): formats\n3. `seed` (int): variation\n"
    "Your output fields are:\n1. `format_name` (str): a name\n2. `reason` (str): why\n"
    "All interactions will be structured in the following way, with the appropriate values "
    "filled in.\n\n[[ ## completed ## ]]\nIn adhering to this structure, your objective is: "
    "pick."
)
_SELECT_USER = (
    "[[ ## topic ## ]]\nmonday coffee\n\n[[ ## catalogue ## ]]\n"
    "drake: preferences, this not that\nthis-is-fine: calm denial while everything burns\n\n"
    "[[ ## seed ## ]]\n0\n\nRespond with the corresponding output fields, starting with the "
    "field `[[ ## format_name ## ]]`, then `[[ ## reason ## ]]`, and then ending with the "
    "marker for `[[ ## completed ## ]]`."
)
SELECT_MESSAGES = (
    {"role": "system", "content": _SELECT_SYSTEM},
    {"role": "user", "content": _SELECT_USER},
)
MAX_REQUESTS_KEPT = 1000
MAX_ARRIVALS_KEPT = 200_000
START_TIMEOUT_S = 10.0
# How long stop() lets in-flight requests (e.g. hung ones) finish before cancelling them.
SHUTDOWN_TIMEOUT_S = 0.25

# latency_dist: how a completion's latency is drawn around latency_s (then + jitter, capped
# by latency_max_s when > 0). fixed: latency_s; uniform: in [0, 2 latency_s) (mean
# latency_s); exponential: mean latency_s; lognormal: median latency_s, log-sd latency_sigma.
LATENCY_DISTS = ("fixed", "uniform", "exponential", "lognormal")
# fail_kind: what an injected failure is. status: an HTTP error in OpenAI's shape (fail_status,
# else 500); reset: the connection is closed with a TCP reset, no answer; not_json: a 200
# whose body is not JSON; no_choices: a 200 JSON completion without "choices"; hang: no
# answer for fail_hang_s (past the client's timeout), then the completion; oversized: a 200
# whose body (OVERSIZED_BYTES) is larger than any completion a client should read.
FAIL_KINDS = ("status", "reset", "not_json", "no_choices", "hang", "oversized")
OVERSIZED_BYTES = 8 * 1024 * 1024
# retry_after_headers: which of Retry-After (seconds) and retry-after-ms a 429/503 carries.
RETRY_AFTER_HEADERS = ("both", "seconds", "ms")
NOT_JSON_BODY = b'{"id": "chatcmpl-fake-truncated", "object": "chat.completion", "choi'


@dataclass
class FakeConfig:
    """What the fake does to each ``/chat/completions`` request; read per request, so a test
    may change it while the server runs.

    Order per request: auth and body checks (answered at once), then ``hang_s``, then the
    injected failure if this call fails (answered without latency, like a fast-rejecting
    rate limiter), else the latency (``latency_dist`` around ``latency_s``, + jitter) and the
    completion.

    Which calls fail: during a storm (``storm_start`` <= ``time.time()`` < ``storm_end``)
    every targeted call, with ``storm_status``; otherwise as ``fail_every`` / ``fail_status``
    say, with ``fail_kind``. Targeted: the request's model is ``fail_model`` (when set) and its
    messages contain ``fail_matching`` (when set); other requests are served normally, so a
    fallback model can succeed while the primary fails.
    """

    latency_s: float = 0.0  # each completion's time to answer, the writer's CPU in it
    jitter_s: float = 0.0  # uniform extra latency in [0, jitter_s), from ``seed``
    # Fault injection. fail_status alone fails every call with it; fail_every alone fails
    # calls N, 2N, ... with 500; both fail calls N, 2N, ... with fail_status. A fail_kind other
    # than "status" fails every call (or calls N, 2N, ... with fail_every) that way instead.
    fail_status: int | None = None  # e.g. 429 or 500
    fail_every: int = 0  # fail 1 call in N (0 = every call if fail_status, else none)
    retry_after_s: float | None = None  # Retry-After (and retry-after-ms) on a 429
    hang_s: float = 0.0  # sleep this long before answering (for client timeouts)
    seed: int = 0  # seeds the jitter
    # Non-empty: faults hit only requests whose messages contain this text (e.g. an output
    # field of one signature, "flagged_claims", to take down the factuality verifier only).
    fail_matching: str = ""
    # Latency distribution (see LATENCY_DISTS), its log-sd for lognormal, and a cap (0 = none).
    latency_dist: str = "fixed"
    latency_sigma: float = 0.5
    latency_max_s: float = 0.0
    # What a failure is (see FAIL_KINDS), and how long a "hang" failure holds its answer.
    fail_kind: str = "status"
    fail_hang_s: float = 60.0
    # Non-empty: faults (storms included) hit only requests for this model.
    fail_model: str = ""
    # A storm: every targeted call in [storm_start, storm_end) (time.time(); storm_end None =
    # until cleared) fails with storm_status. FakeOpenAI.storm() sets one relative to now.
    storm_start: float | None = None
    storm_end: float | None = None
    storm_status: int = 500
    retry_after_headers: str = "both"  # see RETRY_AFTER_HEADERS

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """ValueError for a knob outside its choices."""
        for name, value, choices in (
            ("latency_dist", self.latency_dist, LATENCY_DISTS),
            ("fail_kind", self.fail_kind, FAIL_KINDS),
            ("retry_after_headers", self.retry_after_headers, RETRY_AFTER_HEADERS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")

    def storming(self, now: float | None = None) -> bool:
        """Whether a storm is on at ``now`` (time.time())."""
        if self.storm_start is None:
            return False
        now = time.time() if now is None else now
        return self.storm_start <= now and (self.storm_end is None or now < self.storm_end)


class FakeOpenAI:
    """The fake server. ``url`` (set once started) is what ``OPENAI_BASE_URL`` should be.

    Counters (written only by the server's loop; reading them from another thread is fine):
    ``calls`` completions answered (200), ``calls_by_model`` the same per requested model,
    ``attempts`` every POST to ``/chat/completions`` (refused ones too), ``attempts_by_model``
    the same per requested model ("" when the body names none), ``failures`` injected
    failures (``failures_by_model`` per model), ``requests`` the JSON bodies that passed auth
    (last ``max_requests``), ``arrivals`` the ``time.time()`` of each attempt (last
    MAX_ARRIVALS_KEPT). Another process reads them at ``GET /_fake/stats`` (``?arrivals=1``
    adds the arrival times), e.g. to measure the rate that reached the provider.
    """

    def __init__(
        self,
        config: FakeConfig | None = None,
        api_key: str = DEFAULT_API_KEY,
        *,
        model: str = DEFAULT_MODEL,
        port: int = 0,
        max_requests: int = MAX_REQUESTS_KEPT,
    ) -> None:
        self.config = config or FakeConfig()
        self.api_key = api_key
        self.model = model
        self.port = port
        self.url = ""
        self.calls = 0
        self.calls_by_model: Counter[str] = Counter()
        self.attempts = 0
        self.attempts_by_model: Counter[str] = Counter()
        self.failures = 0
        self.failures_by_model: Counter[str] = Counter()
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_requests)
        self.arrivals: deque[float] = deque(maxlen=MAX_ARRIVALS_KEPT)
        self._rng = random.Random(self.config.seed)
        self._faultable = 0  # calls past the auth/body checks, for fail_every
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeOpenAI:
        """Listen on 127.0.0.1 (``port``, or a free one) in the running loop."""
        if self._runner is not None:
            raise RuntimeError("fake-openai is already running")
        app = web.Application(middlewares=[_json_errors])
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_fake/stats", self._stats)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        # Bind the socket ourselves: the port is known exactly, with no probe-then-bind race.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, self.port))
            sock.listen(512)
            sock.setblocking(False)
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = sock.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}/v1"
        return self

    async def stop(self) -> None:
        """Close the listener and every connection; in-flight requests get SHUTDOWN_TIMEOUT_S."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> FakeOpenAI:
        """Serve from a loop of its own in a daemon thread; returns once listening."""
        if self._thread is not None:
            raise RuntimeError("fake-openai is already running in a thread")
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=serve, name="fake-openai", daemon=True)
        thread.start()
        if not started.wait(START_TIMEOUT_S):
            raise RuntimeError(f"fake-openai did not start within {START_TIMEOUT_S:g} s")
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread
        return self

    def stop_thread(self, timeout: float = 5.0) -> None:
        """Stop the thread started by start_in_thread and wait for it (no-op if none)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"fake-openai thread still alive after {timeout:g} s")
        self._loop = self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    def reset(self) -> None:
        """Zero the counters and forget the recorded requests (the config is kept)."""
        self.calls = self.attempts = self.failures = self._faultable = 0
        self.calls_by_model.clear()
        self.attempts_by_model.clear()
        self.failures_by_model.clear()
        self.requests.clear()
        self.arrivals.clear()

    def storm(self, duration_s: float | None, *, after_s: float = 0.0, status: int = 500) -> None:
        """Fail every targeted call with ``status`` from ``after_s`` seconds from now, for
        ``duration_s`` seconds (None: until :meth:`calm`)."""
        start = time.time() + after_s
        self.config.storm_status = status
        self.config.storm_end = None if duration_s is None else start + duration_s
        self.config.storm_start = start

    def calm(self) -> None:
        """End any storm now."""
        self.config.storm_start = self.config.storm_end = None

    # ------------------------------------------------------------------ handlers

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _unauthorized()
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": self.model, "object": "model", "created": 0, "owned_by": "fake-openai"}
                ],
            }
        )

    def stats(self, arrivals: bool = False) -> dict[str, Any]:
        """The counters as JSON-ready data (what ``GET /_fake/stats`` answers)."""
        out: dict[str, Any] = {
            "attempts": self.attempts,
            "calls": self.calls,
            "failures": self.failures,
            "attempts_by_model": dict(self.attempts_by_model),
            "calls_by_model": dict(self.calls_by_model),
            "failures_by_model": dict(self.failures_by_model),
        }
        if arrivals:
            out["arrivals"] = list(self.arrivals)
        return out

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats(request.query.get("arrivals") in ("1", "true")))

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        self.attempts += 1
        self.arrivals.append(time.time())
        raw = await request.read()
        problem = ""
        try:
            body: Any = json.loads(raw)
            parsed = True
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            body, parsed, problem = None, False, str(exc)
        model = body.get("model") if isinstance(body, dict) else None
        model = model if isinstance(model, str) else ""
        self.attempts_by_model[model] += 1
        if not self._authorized(request):
            return _unauthorized()
        if not parsed:
            return error(400, f"the body is not valid JSON: {problem}")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object")
        self.requests.append(body)
        invalid = _invalid(body)
        if invalid is not None:
            return invalid
        config = self.config
        if config.hang_s > 0:
            await asyncio.sleep(config.hang_s)
        self._faultable += 1
        targeted = (not config.fail_model or config.fail_model == model) and (
            not config.fail_matching or config.fail_matching in json.dumps(body["messages"])
        )
        kind, status = self._fault(config) if targeted else (None, 0)
        if kind is not None:
            self.failures += 1
            self.failures_by_model[model] += 1
            if kind == "hang":
                await asyncio.sleep(config.fail_hang_s)  # then answer, late
            else:
                return self._failure(request, body, config, kind, status)
        # The latency is the provider's whole time to answer, from the request's arrival: the
        # fake's own CPU (reading, the writer, the JSON) is inside it, as a real model's compute
        # is, so concurrent calls are not answered later than asked.
        answer_at = (
            arrived if config.hang_s <= 0 and kind is None else time.monotonic()
        ) + self.next_delay(config)
        try:
            answer, served = web.json_response(completion(body)), True
        except (LM15Error, ValueError, TypeError) as exc:
            # The writer cannot answer these messages (an unknown signature, a malformed
            # message): a client error, as a real endpoint's refusal would be.
            answer, served = error(400, f"fake-openai: {exc}"), False
        if answer_at > time.monotonic():
            await asyncio.sleep(answer_at - time.monotonic())
        if served:  # counted once answered: a client that gave up during the wait got nothing
            self.calls += 1
            self.calls_by_model[body["model"]] += 1
        return answer

    def next_delay(self, config: FakeConfig | None = None) -> float:
        """The latency of the next completion: drawn as ``latency_dist`` says around
        latency_s, plus seeded jitter, capped by latency_max_s when set. (The generator is
        seeded once, from the config the fake was created with.)"""
        config = config or self.config
        base, dist = config.latency_s, config.latency_dist
        if dist == "fixed" or base <= 0:
            delay = base
        elif dist == "uniform":
            delay = self._rng.uniform(0, 2 * base)
        elif dist == "exponential":
            delay = self._rng.expovariate(1 / base)
        elif dist == "lognormal":
            delay = base * math.exp(self._rng.gauss(0, config.latency_sigma))
        else:
            raise ValueError(
                f"latency_dist must be one of {', '.join(LATENCY_DISTS)}, not {dist!r}"
            )
        jitter = self._rng.uniform(0, config.jitter_s) if config.jitter_s > 0 else 0.0
        delay += jitter
        if config.latency_max_s > 0:
            delay = min(delay, config.latency_max_s)
        return delay

    def _fault(self, config: FakeConfig) -> tuple[str | None, int]:
        """(fail kind, status) if this call fails, else (None, 0)."""
        if config.storming():
            return "status", config.storm_status
        every = config.fail_every
        if every > 0:
            if self._faultable % every:
                return None, 0
        elif config.fail_status is None and config.fail_kind == "status":
            return None, 0
        return config.fail_kind, config.fail_status or 500

    def _failure(
        self, request: web.Request, body: dict[str, Any], config: FakeConfig, kind: str, status: int
    ) -> web.Response:
        if kind == "reset":
            transport = request.transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:  # linger 0: close() sends a RST, not a FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            return web.Response(status=500)  # never written: the transport is gone
        if kind == "not_json":
            return web.Response(body=NOT_JSON_BODY, content_type="application/json")
        if kind == "oversized":
            return web.Response(body=b" " * OVERSIZED_BYTES, content_type="application/json")
        if kind == "no_choices":
            return web.json_response(
                {
                    "id": f"chatcmpl-fake-{time.time_ns():x}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                }
            )
        if kind != "status":
            raise ValueError(f"fail_kind must be one of {', '.join(FAIL_KINDS)}, not {kind!r}")
        headers = _retry_after(config) if status in (429, 503) else {}
        if status == 429:
            return error(
                429,
                "Rate limit reached (injected by fake-openai)",
                type="requests",
                code="rate_limit_exceeded",
                headers=headers,
            )
        return error(
            status,
            f"Injected failure {status} (fake-openai)",
            type="server_error" if status >= 500 else "invalid_request_error",
            headers=headers,
        )


def _retry_after(config: FakeConfig) -> dict[str, str]:
    """Retry-After (seconds) and/or retry-after-ms from retry_after_s, if set."""
    seconds = config.retry_after_s
    if seconds is None:
        return {}
    headers = {}
    if config.retry_after_headers in ("both", "seconds"):
        headers["Retry-After"] = (
            str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
        )
    if config.retry_after_headers in ("both", "ms"):
        headers["retry-after-ms"] = str(int(seconds * 1000))
    return headers


def completion(body: dict[str, Any]) -> dict[str, Any]:
    """The ``chat.completion`` the offline writer gives for a validated request body.

    Only ``model`` and ``messages`` are read: the writer needs nothing else, and generation
    knobs (temperature, max_tokens, seed, response_format...) then cannot make the reader
    refuse a body a real endpoint would take. ``n`` > 1 repeats the (deterministic) answer.
    """
    request = request_from_openai_chat({"model": body["model"], "messages": body["messages"]})
    response = complete(request)
    text = response.message.text or ""
    n = body.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    usage = response.usage
    prompt_tokens = usage.input_tokens or 0
    completion_tokens = (usage.output_tokens or 0) * n
    return {
        "id": f"chatcmpl-fake-{time.time_ns():x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "system_fingerprint": "fake-openai",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": response.finish_reason or "stop",
            }
            for i in range(n)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _invalid(body: dict[str, Any]) -> web.Response | None:
    """A 400 for a body that is not a non-streaming chat request, else None."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return error(400, "you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return error(400, "'messages' must be a non-empty array", param="messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return error(400, "each message must be an object with a 'role'", param="messages")
    if body.get("stream"):
        return error(
            400,
            "fake-openai does not stream: send 'stream': false or leave it out",
            param="stream",
            code="unsupported_parameter",
        )
    return None


def error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in OpenAI's JSON shape."""
    return web.json_response(
        {"error": {"message": message, "type": type, "param": param, "code": code}},
        status=status,
        headers=headers,
    )


def _unauthorized() -> web.Response:
    return error(401, "Incorrect API key provided (fake-openai)", code="invalid_api_key")


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (404, 405, ...) and crashes in OpenAI's error shape too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(
            exc.status,
            f"{exc.reason}: {request.method} {request.path}",
            code="not_found" if exc.status == 404 else None,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug in the fake: say so rather than drop the connection
        return error(500, f"fake-openai crashed: {exc!r}", type="server_error")


# ---------------------------------------------------------------------- CLI


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m memesys.testing.fake_openai",
        description="Serve a fake OpenAI-compatible endpoint on 127.0.0.1 until SIGTERM or SIGINT.",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the model /v1/models lists")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per completion")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra uniform seconds")
    parser.add_argument("--seed", type=int, default=0, help="seeds the jitter")
    parser.add_argument("--fail-status", type=int, default=None)
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=None)
    parser.add_argument("--hang", type=float, default=0.0)
    parser.add_argument(
        "--fail-matching",
        default="",
        help="inject faults only into requests whose messages contain this",
    )
    parser.add_argument(
        "--fail-model", default="", help="inject faults only into requests for this model"
    )
    parser.add_argument(
        "--fail-kind",
        choices=FAIL_KINDS,
        default="status",
        help="what a failure is: an HTTP error (--fail-status, else 500), a "
        "connection reset, a 200 that is not JSON, a 200 without "
        "choices, or a hang of --fail-hang seconds",
    )
    parser.add_argument(
        "--fail-hang", type=float, default=60.0, help="seconds a 'hang' failure holds its answer"
    )
    parser.add_argument("--retry-after-headers", choices=RETRY_AFTER_HEADERS, default="both")
    parser.add_argument(
        "--latency-dist",
        choices=LATENCY_DISTS,
        default="fixed",
        help="fixed, uniform in [0, 2x), exponential (mean) or lognormal (median) around --latency",
    )
    parser.add_argument(
        "--latency-sigma", type=float, default=0.5, help="log-sd of the lognormal latency"
    )
    parser.add_argument(
        "--latency-max", type=float, default=0.0, help="cap on a completion's latency (0: none)"
    )
    parser.add_argument(
        "--storm-after",
        type=float,
        default=None,
        help="seconds after start when every (targeted) call starts failing",
    )
    parser.add_argument(
        "--storm-for",
        type=float,
        default=None,
        help="how long the storm lasts (default: until stopped)",
    )
    parser.add_argument("--storm-status", type=int, default=500)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> FakeConfig:
    """The FakeConfig the command line asks for (a storm is set by :func:`_serve`)."""
    return FakeConfig(
        latency_s=args.latency,
        jitter_s=args.jitter,
        seed=args.seed,
        fail_status=args.fail_status,
        fail_every=args.fail_every,
        retry_after_s=args.retry_after,
        hang_s=args.hang,
        fail_matching=args.fail_matching,
        fail_model=args.fail_model,
        fail_kind=args.fail_kind,
        fail_hang_s=args.fail_hang,
        retry_after_headers=args.retry_after_headers,
        latency_dist=args.latency_dist,
        latency_sigma=args.latency_sigma,
        latency_max_s=args.latency_max,
        storm_status=args.storm_status,
    )


async def _serve(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    fake = FakeOpenAI(config, api_key=args.api_key, model=args.model, port=args.port)
    if args.storm_after is not None or args.storm_for is not None:
        fake.storm(args.storm_for, after_s=args.storm_after or 0.0, status=args.storm_status)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await fake.start()
    try:
        print(f"fake-openai ready at {fake.url}", flush=True)
        await done.wait()
    finally:
        await fake.stop()
    print(f"fake-openai stopped after {fake.calls} completions", flush=True)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_serve(_parse(argv)))


if __name__ == "__main__":
    main()
