"""Where the tree meets the LLM client layer: a failed LLM call becomes the request's failure
with its own code and Retry-After (``llm_unavailable``, ``llm_rate_limited``,
``budget_exhausted``). (The deadline of the request being served reaches the LLM calls by
itself: :mod:`actors.deadlines` is the one current deadline, a context variable of the task
that awaits the call.)"""

from __future__ import annotations

from actors.base import RequestFailed
from memesys.pipeline.errors import MemeFailed


def request_failed(failed: MemeFailed) -> RequestFailed:
    """The request's answer for a meme (or a judging stage) that failed: the one conversion
    from the pipeline's failure (memesys.pipeline.errors.lm_failed for an LLM call) to the
    tree's, keeping the code, the message and the Retry-After."""
    return RequestFailed(failed.code, failed.message, failed.retry_after)
