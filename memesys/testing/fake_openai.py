"""A fake OpenAI-compatible chat endpoint for tests and benchmarks.

It answers ``POST /v1/chat/completions`` in OpenAI's ``chat.completion`` shape with text written
by the offline writer (:mod:`memesys.offline.writer`) from the very messages it received, so
whichever DSPy signature asked gets exactly the ``[[ ## field ## ]]`` sections (or JSON) its
adapter parses. The body is read back into a canonical request with DSPy's own reader,
``dspy.lm15.request_from_openai_chat`` (the inverse of what ``dspy.LM(engine="lm15")`` writes),
and handed to ``offline_writer.complete``: the same function the offline engine runs, so any
signature the writer learns is answered here too.

Latency, jitter, hangs and failures are injectable (:class:`FakeConfig`, mutable while running).
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
import random
import signal
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from dspy.lm15 import LM15Error, request_from_openai_chat

from memesys.offline.engine import complete

HOST = "127.0.0.1"
DEFAULT_MODEL = "fake-model"
DEFAULT_API_KEY = "test-key"
MAX_REQUESTS_KEPT = 1000
START_TIMEOUT_S = 10.0
# How long stop() lets in-flight requests (e.g. hung ones) finish before cancelling them.
SHUTDOWN_TIMEOUT_S = 0.25


@dataclass
class FakeConfig:
    """What the fake does to each ``/chat/completions`` request; read per request, so a test
    may change it while the server runs.

    Order per request: auth and body checks (answered at once), then ``hang_s``, then the
    injected failure if this call fails (answered without latency, like a fast-rejecting
    rate limiter), else ``latency_s`` + jitter and the completion.
    """

    latency_s: float = 0.0          # added to every completion (asyncio.sleep: calls overlap)
    jitter_s: float = 0.0           # uniform extra latency in [0, jitter_s), from ``seed``
    # Fault injection. fail_status alone fails every call with it; fail_every alone fails
    # calls N, 2N, ... with 500; both fail calls N, 2N, ... with fail_status.
    fail_status: int | None = None  # e.g. 429 or 500
    fail_every: int = 0             # fail 1 call in N (0 = every call if fail_status, else none)
    retry_after_s: float | None = None  # Retry-After (and retry-after-ms) on a 429
    hang_s: float = 0.0             # sleep this long before answering (for client timeouts)
    seed: int = 0                   # seeds the jitter
    # Non-empty: faults hit only requests whose messages contain this text (e.g. an output
    # field of one signature, "flagged_claims", to take down the factuality verifier only).
    fail_matching: str = ""


class FakeOpenAI:
    """The fake server. ``url`` (set once started) is what ``OPENAI_BASE_URL`` should be.

    Counters (written only by the server's loop; reading them from another thread is fine):
    ``calls`` completions answered (200), ``calls_by_model`` the same per requested model,
    ``attempts`` every POST to ``/chat/completions`` (refused ones too), ``failures`` injected
    failures, ``requests`` the JSON bodies that passed auth (last ``max_requests``).
    """

    def __init__(self, config: FakeConfig | None = None, api_key: str = DEFAULT_API_KEY,
                 *, model: str = DEFAULT_MODEL, port: int = 0,
                 max_requests: int = MAX_REQUESTS_KEPT) -> None:
        self.config = config or FakeConfig()
        self.api_key = api_key
        self.model = model
        self.port = port
        self.url = ""
        self.calls = 0
        self.calls_by_model: Counter[str] = Counter()
        self.attempts = 0
        self.failures = 0
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_requests)
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
        self.requests.clear()

    # ------------------------------------------------------------------ handlers

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _unauthorized()
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "fake-openai"}]})

    async def _chat_completions(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if not self._authorized(request):
            return _unauthorized()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error(400, f"the body is not valid JSON: {exc}")
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
        targeted = not config.fail_matching or config.fail_matching in json.dumps(
            body["messages"])
        fault = self._fault(config) if targeted else None
        if fault is not None:
            self.failures += 1
            return fault
        delay = self.next_delay(config)
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            response = completion(body)
        except (LM15Error, ValueError, TypeError) as exc:
            # The writer cannot answer these messages (an unknown signature, a malformed
            # message): a client error, as a real endpoint's refusal would be.
            return error(400, f"fake-openai: {exc}")
        self.calls += 1
        self.calls_by_model[body["model"]] += 1
        return web.json_response(response)

    def next_delay(self, config: FakeConfig | None = None) -> float:
        """The latency of the next completion: latency_s plus seeded jitter. (The jitter
        generator is seeded once, from the config the fake was created with.)"""
        config = config or self.config
        jitter = self._rng.uniform(0, config.jitter_s) if config.jitter_s > 0 else 0.0
        return config.latency_s + jitter

    def _fault(self, config: FakeConfig) -> web.Response | None:
        every = config.fail_every
        if every > 0:
            if self._faultable % every:
                return None
            status = config.fail_status or 500
        elif config.fail_status is not None:
            status = config.fail_status
        else:
            return None
        if status == 429:
            headers = {}
            if config.retry_after_s is not None:
                seconds = config.retry_after_s
                headers["Retry-After"] = (str(int(seconds)) if float(seconds).is_integer()
                                          else f"{seconds:g}")
                headers["retry-after-ms"] = str(int(seconds * 1000))
            return error(429, "Rate limit reached (injected by fake-openai)",
                         type="requests", code="rate_limit_exceeded", headers=headers)
        return error(status, f"Injected failure {status} (fake-openai)",
                     type="server_error" if status >= 500 else "invalid_request_error")


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
        "choices": [{
            "index": i,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": response.finish_reason or "stop",
        } for i in range(n)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
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
        return error(400, "fake-openai does not stream: send 'stream': false or leave it out",
                     param="stream", code="unsupported_parameter")
    return None


def error(status: int, message: str, *, type: str = "invalid_request_error",
          param: str | None = None, code: str | None = None,
          headers: dict[str, str] | None = None) -> web.Response:
    """An error in OpenAI's JSON shape."""
    return web.json_response(
        {"error": {"message": message, "type": type, "param": param, "code": code}},
        status=status, headers=headers)


def _unauthorized() -> web.Response:
    return error(401, "Incorrect API key provided (fake-openai)", code="invalid_api_key")


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own refusals (404, 405, ...) and crashes in OpenAI's error shape too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, f"{exc.reason}: {request.method} {request.path}",
                     code="not_found" if exc.status == 404 else None)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug in the fake: say so rather than drop the connection
        return error(500, f"fake-openai crashed: {exc!r}", type="server_error")


# ---------------------------------------------------------------------- CLI

def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m memesys.testing.fake_openai",
                                     description="Serve a fake OpenAI-compatible endpoint on "
                                                 "127.0.0.1 until SIGTERM or SIGINT.")
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
    parser.add_argument("--fail-matching", default="",
                        help="inject faults only into requests whose messages contain this")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    config = FakeConfig(latency_s=args.latency, jitter_s=args.jitter, seed=args.seed,
                        fail_status=args.fail_status, fail_every=args.fail_every,
                        retry_after_s=args.retry_after, hang_s=args.hang,
                        fail_matching=args.fail_matching)
    fake = FakeOpenAI(config, api_key=args.api_key, model=args.model, port=args.port)
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
