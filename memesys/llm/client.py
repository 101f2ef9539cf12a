"""One pooled provider client per process: the openai SDK's ``AsyncOpenAI`` with
``max_retries=0`` (the transport's retry layer is the only one) over aiohttp keep-alive
connections, at most ``max_connections`` of them per endpoint.

A client's connections belong to the event loop that opened them, so the pool is per process
*and* loop: an actor process or the gateway has one loop and so one client per endpoint.
A synchronous caller (``HardenedTransport.complete``: DSPy's sync engine, scripts, tests) runs
its calls on a loop of its thread, kept while the thread lives (:func:`run_blocking`): a fresh
loop and client per call cost 120 ms a call, and one loop shared by every calling thread puts
their Redis round trips in one line.

The SDK's aiohttp transport (``DefaultAioHttpClient``) and its generic ``post`` with a raw
answer are used, not ``chat.completions.create``: the body is already the Chat Completions wire
format (DSPy's OpenAI dialect writes it), and the typed request transform and response model
would triple the CPU of a call (measured on the fake: 0.7 ms a call this way, 1.1 ms through
``with_raw_response.create``, 1.6 ms through ``create``; urllib3 in a thread took 0.3 ms, plus
the thread). The SDK still sends its own headers (``User-Agent``, ``X-Stainless-*``), raises
its typed errors with the provider's answer, and owns the connection pool.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import queue
import ssl
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx2
import openai

# Per-request lines of the SDK and its HTTP stack stay out of the logs (the transport logs and
# counts what matters: failed attempts, breaker transitions, fallbacks, hedges).
for _name in ("openai", "httpx2", "httpx"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# An answer larger than this is not a chat completion this daemon asked for: the attempt fails
# (malformed) instead of being parsed.
MAX_ANSWER_BYTES = 4 * 1024 * 1024

_Key = tuple[str, str, int]
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Key, openai.AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()
_threads = threading.local()
log = logging.getLogger(__name__)
T = TypeVar("T")


def provider_client(base_url: str, api_key: str, max_connections: int) -> openai.AsyncOpenAI:
    """The running loop's client for ``base_url`` with ``api_key`` (made on first use, shared
    by every model and stage of the process)."""
    loop = asyncio.get_running_loop()
    key = (base_url.rstrip("/"), api_key, max_connections)
    with _lock:
        clients = _clients.setdefault(loop, {})
        client = clients.get(key)
        if client is None:
            limits = httpx2.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
            client = clients[key] = openai.AsyncOpenAI(
                api_key=api_key,
                base_url=key[0],
                max_retries=0,
                http_client=openai.DefaultAioHttpClient(limits=limits, verify=tls()),
            )
        return client


@functools.cache
def tls() -> ssl.SSLContext:
    """The process's TLS context (the certifi roots), made once: loading the roots takes
    20-100 ms, which a client made per loop would pay each time, and a first call under load
    would pay while the calls granted send times behind it wait (they then went together)."""
    return httpx2.create_ssl_context()


def run_blocking(call: Callable[[], Awaitable[T]]) -> T:
    """``await call()`` for a synchronous caller (never from a running loop's thread: it would
    block that loop), on this thread's loop for synchronous calls (made at its first call,
    kept with its client while the thread lives, closed with it)."""
    loop = getattr(_threads, "loop", None)
    if loop is None:
        loop = _threads.loop = _ThreadLoop()
    return loop.run(call)


class _ThreadLoop:
    """A thread's loop for its synchronous calls: closed with its clients when the thread ends
    (its locals go) by the closer thread, or at exit for the threads still alive then.

    The loop stays in ``_open_loops`` until it is closed: without that strong reference a loop
    and its wrapper ended as cyclic garbage together, and the collector ran the loop's own
    finalizer (closing it, "unclosed event loop") while the closer closed it too."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        with _lock:  # threads that start together start one closer
            _open_loops.add(self.loop)
            _closer()  # started here, never from a finalizer

    def run(self, call: Callable[[], Awaitable[T]]) -> T:
        return self.loop.run_until_complete(call())

    def __del__(self) -> None:
        # A finalizer may run anywhere (in a thread holding _lock, inside another running
        # loop): it only hands the loop over; SimpleQueue.put is safe there.
        _to_close.put(self.loop)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Close ``loop`` and its clients, once: whoever takes it out of ``_open_loops`` (the
    closer, or the exit) closes it."""
    with _lock:
        if loop not in _open_loops:
            return
        _open_loops.remove(loop)
    if not loop.is_running():  # else its thread is still in a call, at exit
        loop.run_until_complete(close_clients())
        loop.close()


_open_loops: set[asyncio.AbstractEventLoop] = set()
_to_close: queue.SimpleQueue[asyncio.AbstractEventLoop] = queue.SimpleQueue()


@functools.cache
def _closer() -> threading.Thread:
    """The thread that closes the loops of ended threads (one per process, made once)."""

    def closing() -> None:
        while True:
            try:
                _close(_to_close.get())  # held by nothing here once closed: it can go
            except Exception:  # the closer lives on: every later loop still needs closing
                log.exception("a thread's event loop did not close")

    thread = threading.Thread(target=closing, name="memesys-llm-close", daemon=True)
    thread.start()
    return thread


@atexit.register
def _close_thread_loops() -> None:
    for loop in list(_open_loops):
        _close(loop)


def run(call: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run`` of ``call()`` for synchronous code (a thread with no running loop), the
    clients its loop opened closed before the loop ends (left open, each run leaked a
    connection pool)."""

    async def closing() -> T:
        try:
            return await call()
        finally:
            await close_clients()

    return asyncio.run(closing())


async def close_clients() -> None:
    """Close the running loop's clients (a loop about to end: its connections go with it)."""
    with _lock:
        clients = _clients.pop(asyncio.get_running_loop(), {})
    for client in clients.values():
        await client.close()
