"""Where the tree meets the LLM client layer: the deadline of the request being served reaches
the LLM calls, and a failed LLM call becomes the request's failure with its own code and
Retry-After (``llm_unavailable``, ``llm_rate_limited``, ``budget_exhausted``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from actors import deadlines
from actors.base import RequestFailed
from memesys.llm import deadline as llm_deadline
from memesys.pipeline.errors import MemeFailed

T = TypeVar("T")


def under_deadline(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with the actor runtime's current deadline as the LLM layer's (call it in
    the worker thread: ``asyncio.to_thread`` copies the runtime's context variable there)."""
    with llm_deadline.serving(deadlines.current()):
        return fn(*args)


def request_failed(failed: MemeFailed) -> RequestFailed:
    """The request's answer for a meme (or a judging stage) that failed: the one conversion
    from the pipeline's failure (memesys.pipeline.errors.lm_failed for an LLM call) to the
    tree's, keeping the code, the message and the Retry-After."""
    return RequestFailed(failed.code, failed.message, failed.retry_after)
