"""Where the tree meets the LLM client layer: a failed LLM call becomes the request's failure
with its own code and Retry-After (``llm_unavailable``, ``llm_rate_limited``,
``budget_exhausted``). (The deadline of the request being served reaches the LLM calls by
itself: :mod:`actors.deadlines` is the one current deadline, and ``asyncio.to_thread`` copies
it into the worker thread.)"""

from __future__ import annotations

from actors.base import RequestFailed
from memesys.pipeline import making


def lm_failed(exc: BaseException) -> RequestFailed:
    """The RequestFailed for a failed LLM call: its contract code and Retry-After."""
    failed = making.lm_failed(exc)
    return RequestFailed(failed.code, failed.message, failed.retry_after)
