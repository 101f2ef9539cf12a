"""A fake OpenAI-compatible chat endpoint for tests and benchmarks.

It answers ``POST /v1/chat/completions`` in OpenAI's ``chat.completion`` shape with text written
by the offline writer (:mod:`memesys.offline.writer`) from the very messages it received, so
whichever DSPy signature asked gets exactly the ``[[ ## field ## ]]`` sections (or JSON) its
adapter parses. The body is read back into a canonical request with DSPy's own reader,
``dspy.lm15.request_from_openai_chat`` (the inverse of what ``dspy.LM(engine="lm15")`` writes),
and handed to ``offline_writer.complete``: the same function the offline LM runs, so any
signature the writer learns is answered here too.

Latency (fixed or drawn from a seeded distribution, lognormal given by its median and p95
among them; per model if wanted: :class:`Latency`), hangs and faults are injectable
(:class:`FakeConfig`, mutable while running): HTTP errors (429 with ``Retry-After`` and
``retry-after-ms``, 5xx), storms of errors for a period, connection resets, malformed 200s (a
body that is not JSON, or JSON without ``choices``), late answers past a client's timeout, each
for every call, one call in N, only the requests for one model or only those whose messages
contain a text. Like a real provider it can enforce a rate limit of its own (requests, and
optionally tokens, in a sliding window: :class:`RateLimiter`), answering 429 with
``Retry-After``, ``retry-after-ms`` and OpenAI's ``x-ratelimit-*`` headers, which its successful
answers carry too. Counters per model (attempts, calls, failures, 429s of the limit, concurrent
calls now and at peak) prove how many attempts each call made, and the headers of each request
(User-Agent, ``X-Stainless-*``) say which client made it.
Run it in the caller's loop (``await fake.start()`` / ``async with``), in a daemon thread with a
loop of its own (``fake.start_in_thread()`` / ``with``), or as a process next to the daemon::

    python -m memesys.testing.fake_openai --port 8099 --latency 0.1
    python -m memesys.testing.fake_openai --latency-median 0.72 --latency-p95 4.1 --seed 1 --rps 10
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
from dataclasses import dataclass, field
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

# How a completion's latency is drawn around its figure (then + jitter, capped when a cap is
# set): see Latency. fixed: the figure; uniform: in [0, 2x) (mean x); exponential: mean x;
# lognormal: median x, log-sd sigma.
LATENCY_DISTS = ("fixed", "uniform", "exponential", "lognormal")
# The standard normal's 95th percentile: a lognormal's p95 is its median x exp(Z95 sigma).
Z95 = 1.6449
# The window a token limit (tokens per minute) counts in.
TOKEN_WINDOW_S = 60.0
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


def lognormal_sigma(median: float, p95: float) -> float:
    """The log-sd of the lognormal with this median and 95th percentile."""
    if not 0 < median <= p95:
        raise ValueError(f"a lognormal needs 0 < median <= p95, not {median:g} and {p95:g}")
    return (math.log(p95) - math.log(median)) / Z95


@dataclass(frozen=True)
class Latency:
    """How long a model takes to answer: ``seconds`` drawn as ``dist`` says (LATENCY_DISTS),
    plus uniform jitter in [0, ``jitter_s``), capped at ``max_s`` when > 0.

    A published latency is usually a median and a tail percentile: :meth:`lognormal` takes
    those (a heavy tail, as real providers have)."""

    seconds: float = 0.0
    dist: str = "fixed"
    sigma: float = 0.5  # the lognormal's log-sd
    max_s: float = 0.0
    jitter_s: float = 0.0

    def __post_init__(self) -> None:
        if self.dist not in LATENCY_DISTS:
            raise ValueError(
                f"latency_dist must be one of {', '.join(LATENCY_DISTS)}, not {self.dist!r}"
            )

    @classmethod
    def lognormal(cls, median: float, p95: float, max_s: float = 0.0) -> Latency:
        """mu = ln(median), sigma = (ln(p95) - mu) / Z95."""
        return cls(median, "lognormal", lognormal_sigma(median, p95), max_s)

    @classmethod
    def parse(cls, spec: str) -> Latency:
        """``"0.1"``: a fixed 0.1 s; ``"0.72:4.1"``: lognormal with median 0.72 s, p95 4.1 s."""
        median, _, p95 = spec.partition(":")
        return cls.lognormal(float(median), float(p95)) if p95 else cls(float(median))

    def draw(self, rng: random.Random) -> float:
        """One completion's latency, from ``rng``."""
        base, dist = self.seconds, self.dist
        if dist == "fixed" or base <= 0:
            delay = base
        elif dist == "uniform":
            delay = rng.uniform(0, 2 * base)
        elif dist == "exponential":
            delay = rng.expovariate(1 / base)
        else:  # lognormal
            delay = base * math.exp(rng.gauss(0, self.sigma))
        if self.jitter_s > 0:
            delay += rng.uniform(0, self.jitter_s)
        return min(delay, self.max_s) if self.max_s > 0 else delay


@dataclass
class FakeConfig:
    """What the fake does to each ``/chat/completions`` request; read per request, so a test
    may change it while the server runs.

    Order per request: auth and body checks (answered at once), then ``hang_s``, then the
    injected failure if this call fails (answered without latency, like a fast-rejecting
    rate limiter), else the latency (``latency_dist`` around ``latency_s``, + jitter) and the
    completion.

    The latency of a request for a model in ``latency_by_model`` is that model's; the others'
    is the ``latency_*`` and ``jitter_s`` fields' (:meth:`latency`).

    With a rate limit (``limit_requests`` in any ``limit_window_s``, ``limit_tokens`` in any
    minute) a request past it is answered 429 at once, before hang, faults and latency, as a
    provider's gateway would (:class:`RateLimiter`).

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
    # Per-model latency, overriding the fields above for requests naming that model.
    latency_by_model: dict[str, Latency] = field(default_factory=dict)
    # The provider's own rate limit (0 = none): at most limit_requests requests admitted in
    # any limit_window_s seconds (1: a per-second limit, 60: per minute), and at most
    # limit_tokens estimated tokens (estimated_tokens) in any TOKEN_WINDOW_S.
    limit_requests: int = 0
    limit_window_s: float = 60.0
    limit_tokens: int = 0

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

    def latency(self, model: str = "") -> Latency:
        """How long a completion for ``model`` takes."""
        own = self.latency_by_model.get(model)
        if own is not None:
            return own
        return Latency(
            self.latency_s, self.latency_dist, self.latency_sigma, self.latency_max_s, self.jitter_s
        )

    def storming(self, now: float | None = None) -> bool:
        """Whether a storm is on at ``now`` (time.time())."""
        if self.storm_start is None:
            return False
        now = time.time() if now is None else now
        return self.storm_start <= now and (self.storm_end is None or now < self.storm_end)


@dataclass(frozen=True)
class Admission:
    """What the rate limit said of one request: ``refused`` names the limit it is past
    ("requests" or "tokens", "" when admitted); ``retry_after_s`` is when it would fit;
    ``headers`` are the ``x-ratelimit-*`` headers of the answer."""

    refused: str
    retry_after_s: float
    headers: dict[str, str]


class RateLimiter:
    """A provider's rate limit: sliding windows of the requests and the estimated tokens it
    admitted (a refused request takes nothing). The limits are read from the config at each
    request, so a test may change them while the server runs.

    The headers are OpenAI's: ``x-ratelimit-limit-requests``, ``-remaining-requests`` (after
    this request) and ``-reset-requests`` (until the window is empty again, as "1s", "120ms",
    "6m0s"), and the ``-tokens`` variants when a token limit is set."""

    def __init__(self) -> None:
        self._requests: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._token_sum = 0

    def admit(self, config: FakeConfig, tokens: int, now: float) -> Admission:
        """Admit (and count) a request of ``tokens`` estimated tokens at ``now`` (monotonic),
        or refuse it with the wait until it would fit."""
        limit, window = config.limit_requests, config.limit_window_s
        token_limit = config.limit_tokens
        while self._requests and self._requests[0] <= now - window:
            self._requests.popleft()
        while self._tokens and self._tokens[0][0] <= now - TOKEN_WINDOW_S:
            self._token_sum -= self._tokens.popleft()[1]
        refused, waits = "", []
        if limit > 0 and len(self._requests) >= limit:
            # One more fits when the request limit-th from the newest leaves the window.
            refused = "requests"
            waits.append(self._requests[len(self._requests) - limit] + window - now)
        if token_limit > 0 and self._token_sum + tokens > token_limit:
            refused = refused or "tokens"
            waits.append(self._token_wait(token_limit - tokens, now))
        if not refused:
            if limit > 0:
                self._requests.append(now)
            if token_limit > 0:
                self._tokens.append((now, tokens))
                self._token_sum += tokens
        return Admission(refused, max(waits, default=0.0), self._headers(config, now))

    def _token_wait(self, room: int, now: float) -> float:
        """Seconds until the tokens in the window are at most ``room`` (a whole window when
        the request alone is over the limit)."""
        if room < 0:
            return TOKEN_WINDOW_S
        held = self._token_sum
        for at, tokens in self._tokens:
            held -= tokens
            if held <= room:
                return at + TOKEN_WINDOW_S - now
        return 0.0

    def _headers(self, config: FakeConfig, now: float) -> dict[str, str]:
        headers = {}
        if config.limit_requests > 0:
            requests = self._requests
            headers["x-ratelimit-limit-requests"] = str(config.limit_requests)
            headers["x-ratelimit-remaining-requests"] = str(
                max(0, config.limit_requests - len(requests))
            )
            reset = requests[-1] + config.limit_window_s - now if requests else 0.0
            headers["x-ratelimit-reset-requests"] = duration_text(reset)
        if config.limit_tokens > 0:
            headers["x-ratelimit-limit-tokens"] = str(config.limit_tokens)
            headers["x-ratelimit-remaining-tokens"] = str(
                max(0, config.limit_tokens - self._token_sum)
            )
            reset = self._tokens[-1][0] + TOKEN_WINDOW_S - now if self._tokens else 0.0
            headers["x-ratelimit-reset-tokens"] = duration_text(reset)
        return headers


def duration_text(seconds: float) -> str:
    """A duration as OpenAI's x-ratelimit-reset-* headers write it: "120ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def estimated_tokens(body: dict[str, Any]) -> int:
    """What a request counts against a token limit before it is answered, as OpenAI
    estimates it: the messages' characters / 4, plus the completion tokens it may ask for."""
    chars = sum(len(str(m.get("content") or "")) for m in body["messages"])
    most = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return math.ceil(chars / 4) + (most if isinstance(most, int) else 0)


class FakeOpenAI:
    """The fake server. ``url`` (set once started) is what ``OPENAI_BASE_URL`` should be.

    Counters (written only by the server's loop; reading them from another thread is fine):
    ``calls`` completions answered (200), ``calls_by_model`` the same per requested model,
    ``attempts`` every POST to ``/chat/completions`` (refused ones too), ``attempts_by_model``
    the same per requested model ("" when the body names none), ``failures`` injected
    failures (``failures_by_model`` per model), ``rate_limited`` the 429s of the fake's own
    rate limit (``rate_limited_by_model``), ``in_flight`` the attempts being answered now and
    ``peak_in_flight`` the most at once (``*_by_model`` per model), ``requests`` the JSON
    bodies that passed auth (last ``max_requests``), ``request_headers`` the User-Agent and
    ``X-Stainless-*`` headers of each attempt, names in lower case (last ``max_requests``;
    ``user_agents`` counts them all), ``arrivals`` the ``time.time()`` of each attempt (last
    MAX_ARRIVALS_KEPT). Another process reads them at ``GET /_fake/stats`` (``?arrivals=1``
    adds the arrival times, ``?headers=1`` the recorded headers), e.g. to measure the rate
    that reached the provider.
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
        self.rate_limited = 0
        self.rate_limited_by_model: Counter[str] = Counter()
        self.in_flight = self.peak_in_flight = 0
        self.in_flight_by_model: Counter[str] = Counter()
        self.peak_in_flight_by_model: Counter[str] = Counter()
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_requests)
        self.request_headers: deque[dict[str, str]] = deque(maxlen=max_requests)
        self.user_agents: Counter[str] = Counter()
        self.arrivals: deque[float] = deque(maxlen=MAX_ARRIVALS_KEPT)
        self.limiter = RateLimiter()
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
        """Zero the counters, empty the rate limit's windows and forget the recorded requests
        (the config is kept; the peaks restart from the calls in flight now)."""
        self.calls = self.attempts = self.failures = self._faultable = self.rate_limited = 0
        self.calls_by_model.clear()
        self.attempts_by_model.clear()
        self.failures_by_model.clear()
        self.rate_limited_by_model.clear()
        self.peak_in_flight = self.in_flight
        self.peak_in_flight_by_model = +self.in_flight_by_model
        self.requests.clear()
        self.request_headers.clear()
        self.user_agents.clear()
        self.arrivals.clear()
        self.limiter = RateLimiter()

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

    def stats(self, arrivals: bool = False, headers: bool = False) -> dict[str, Any]:
        """The counters as JSON-ready data (what ``GET /_fake/stats`` answers)."""
        out: dict[str, Any] = {
            "attempts": self.attempts,
            "calls": self.calls,
            "failures": self.failures,
            "rate_limited": self.rate_limited,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "attempts_by_model": dict(self.attempts_by_model),
            "calls_by_model": dict(self.calls_by_model),
            "failures_by_model": dict(self.failures_by_model),
            "rate_limited_by_model": dict(self.rate_limited_by_model),
            "in_flight_by_model": dict(+self.in_flight_by_model),
            "peak_in_flight_by_model": dict(self.peak_in_flight_by_model),
            "user_agents": dict(self.user_agents),
        }
        if arrivals:
            out["arrivals"] = list(self.arrivals)
        if headers:
            out["request_headers"] = list(self.request_headers)
        return out

    async def _stats(self, request: web.Request) -> web.Response:
        def asked(name: str) -> bool:
            return request.query.get(name) in ("1", "true")

        return web.json_response(self.stats(asked("arrivals"), asked("headers")))

    def _record_headers(self, request: web.Request) -> None:
        """Which client called: its User-Agent and the openai SDK's X-Stainless-* headers,
        named in lower case (as HTTP/2 writes them: header names are case-insensitive)."""
        seen = {
            name.lower(): value
            for name, value in request.headers.items()
            if name.lower() == "user-agent" or name.lower().startswith("x-stainless-")
        }
        self.request_headers.append(seen)
        self.user_agents[request.headers.get("User-Agent", "")] += 1

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        self.attempts += 1
        self.arrivals.append(time.time())
        self._record_headers(request)
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
        self.in_flight += 1
        self.in_flight_by_model[model] += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.peak_in_flight_by_model[model] = max(
            self.peak_in_flight_by_model[model], self.in_flight_by_model[model]
        )
        try:
            return await self._answer(request, arrived, body, parsed, problem, model)
        finally:
            self.in_flight -= 1
            self.in_flight_by_model[model] -= 1

    async def _answer(
        self,
        request: web.Request,
        arrived: float,
        body: Any,
        parsed: bool,
        problem: str,
        model: str,
    ) -> web.StreamResponse:
        """The answer to one attempt, past the counting of it."""
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
        admission = self.limiter.admit(config, estimated_tokens(body), time.monotonic())
        if admission.refused:
            self.rate_limited += 1
            self.rate_limited_by_model[model] += 1
            return _rate_limited(config, admission, model)
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
        ) + self.next_delay(config, model)
        try:
            answer, served = web.json_response(completion(body)), True
        except (LM15Error, ValueError, TypeError) as exc:
            # The writer cannot answer these messages (an unknown signature, a malformed
            # message): a client error, as a real endpoint's refusal would be.
            answer, served = error(400, f"fake-openai: {exc}"), False
        answer.headers.update(admission.headers)
        if answer_at > time.monotonic():
            await asyncio.sleep(answer_at - time.monotonic())
        if served:  # counted once answered: a client that gave up during the wait got nothing
            self.calls += 1
            self.calls_by_model[body["model"]] += 1
        return answer

    def next_delay(self, config: FakeConfig | None = None, model: str = "") -> float:
        """The latency of the next completion for ``model`` (:meth:`FakeConfig.latency`).
        (The generator is seeded once, from the config the fake was created with.)"""
        return (config or self.config).latency(model).draw(self._rng)

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


def _rate_limited(config: FakeConfig, admission: Admission, model: str) -> web.Response:
    """The 429 of the fake's own limit, as OpenAI answers it: Retry-After in whole seconds
    (rounded up, as HTTP writes it), retry-after-ms to the millisecond (as the config's
    retry_after_headers says), and the x-ratelimit-* headers."""
    wait = max(admission.retry_after_s, 0.0)
    headers = dict(admission.headers)
    if config.retry_after_headers in ("both", "seconds"):
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    if config.retry_after_headers in ("both", "ms"):
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
    if admission.refused == "tokens":
        limit = f"tokens per min (TPM): Limit {config.limit_tokens}"
    else:
        per = "min (RPM)" if config.limit_window_s == 60 else f"{config.limit_window_s:g} s"
        limit = f"requests per {per}: Limit {config.limit_requests}"
    return error(
        429,
        f"Rate limit reached for {model} on {limit}. Please try again in {wait:.3f}s.",
        type=admission.refused,
        code="rate_limit_exceeded",
        headers=headers,
    )


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
    parser.add_argument("--seed", type=int, default=0, help="seeds the latency and the jitter")
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
        "--latency-median",
        type=float,
        default=None,
        help="a lognormal latency with this median (seconds); needs --latency-p95, "
        "replaces --latency and --latency-dist",
    )
    parser.add_argument(
        "--latency-p95", type=float, default=None, help="the lognormal latency's 95th percentile"
    )
    parser.add_argument(
        "--model-latency",
        action="append",
        default=[],
        metavar="MODEL=SPEC",
        help="the latency of one model: SECONDS (fixed) or MEDIAN:P95 (lognormal); repeatable",
    )
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument(
        "--rps", type=int, default=0, help="the provider's limit: requests in any second"
    )
    limit.add_argument(
        "--rpm", type=int, default=0, help="the provider's limit: requests in any minute"
    )
    parser.add_argument(
        "--tpm", type=int, default=0, help="the provider's limit: estimated tokens in any minute"
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
    args = parser.parse_args(argv)
    if (args.latency_median is None) != (args.latency_p95 is None):
        parser.error("--latency-median and --latency-p95 go together")
    try:
        args.model_latency = dict(_model_latency(spec) for spec in args.model_latency)
        if args.latency_median is not None:
            lognormal_sigma(args.latency_median, args.latency_p95)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _model_latency(spec: str) -> tuple[str, Latency]:
    model, sep, latency = spec.partition("=")
    if not (model and sep and latency):
        raise ValueError(f"--model-latency wants MODEL=SECONDS or MODEL=MEDIAN:P95, not {spec!r}")
    return model, Latency.parse(latency)


def config_from_args(args: argparse.Namespace) -> FakeConfig:
    """The FakeConfig the command line asks for (a storm is set by :func:`_serve`)."""
    latency, dist, sigma = args.latency, args.latency_dist, args.latency_sigma
    if args.latency_median is not None:
        lognormal = Latency.lognormal(args.latency_median, args.latency_p95)
        latency, dist, sigma = lognormal.seconds, lognormal.dist, lognormal.sigma
    requests, window = (args.rps, 1.0) if args.rps else (args.rpm, 60.0)
    return FakeConfig(
        latency_s=latency,
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
        latency_dist=dist,
        latency_sigma=sigma,
        latency_max_s=args.latency_max,
        storm_status=args.storm_status,
        latency_by_model=args.model_latency,
        limit_requests=requests,
        limit_window_s=window,
        limit_tokens=args.tpm,
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
    print(
        f"fake-openai stopped after {fake.calls} completions "
        f"({fake.rate_limited} answered 429 by its rate limit)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_serve(_parse(argv)))


if __name__ == "__main__":
    main()
