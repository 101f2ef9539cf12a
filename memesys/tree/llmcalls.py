"""Where the tree meets the LLM client layer: the deadline of the request being served reaches
the LLM calls, and a failed LLM call becomes the request's failure with its own code and
Retry-After (``llm_unavailable``, ``llm_rate_limited``, ``budget_exhausted``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from actors import deadlines
from actors.base import RequestFailed
from memesys.llm import deadline as llm_deadline
from memesys.pipeline import making

T = TypeVar("T")


def under_deadline(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with the actor runtime's current deadline as the LLM layer's (call it in
    the worker thread: ``asyncio.to_thread`` copies the runtime's context variable there)."""
    with llm_deadline.serving(deadlines.current()):
        return fn(*args)


def lm_failed(exc: BaseException) -> RequestFailed:
    """The RequestFailed for a failed LLM call: its contract code and Retry-After."""
    failed = making.lm_failed(exc)
    return RequestFailed(failed.code, failed.message, failed.retry_after)
