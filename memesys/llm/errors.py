"""How a failed LLM call is told: one error type carrying its contract code and Retry-After.

:class:`LLMCallError` subclasses DSPy's ``LMProviderError``, so DSPy passes it through its
engine boundary unchanged (an ``LMError`` is kept by identity) and every stage raises it as
is. :func:`failure_of` turns any LM failure into (contract code, retry_after) for the tree.
"""

from __future__ import annotations

from typing import NamedTuple

from dspy.utils.exceptions import (
    LMError,
    LMProviderError,
    LMRateLimitError,
    LMServerError,
    LMTimeoutError,
)

from memesys.errors import ErrorCode

# Why an attempt or a call failed (metrics and logs label by it).
TIMEOUT = "timeout"
CONNECT = "connect"
SERVER = "server"  # 5xx
RATE_LIMITED = "rate_limited"  # 429
MALFORMED = "malformed"  # a 200 whose body is not a chat completion
CLIENT = "client"  # a 4xx caused by our request (never retried, never counted)
OPEN = "open"  # the breaker is open
LIMITED = "limited"  # our rate limit: no slot before the deadline
BUDGET = "budget"  # the daily token budget is spent
BULKHEAD = "bulkhead"  # every slot of the stage's kind in this process is busy
DEADLINE = "deadline"  # no time left for another attempt


# DSPy is untyped (its classes are Any to mypy): the subclasses below are DSPy's own errors.
class LLMCallError(LMProviderError):  # type: ignore[misc]
    """A call the client layer gave up on: ``memesys_code`` is what the gateway answers
    (``llm_unavailable``, ``llm_rate_limited``, ``budget_exhausted``), ``retry_after`` the
    seconds a client should wait (None: the code's default), ``kind`` why."""

    default_code = "memesys_llm"

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        kind: str,
        model: str,
        retry_after: float | None = None,
        status: int | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(
            message,
            model=model,
            provider="openai-compatible",
            status=status,
            retry_after=retry_after,
        )
        self.memesys_code = code
        self.kind = kind
        self.attempts = attempts


class LLMRateLimited(LLMCallError, LMRateLimitError):  # type: ignore[misc]
    """A call given up on because of rate limits (the provider's or ours)."""

    default_code = "rate_limit"


class LLMTimedOut(LLMCallError, LMTimeoutError):  # type: ignore[misc]
    """A call given up on because its attempts timed out or its deadline left no room."""

    default_code = "timeout"


class LLMServerFailed(LLMCallError, LMServerError):  # type: ignore[misc]
    """A call given up on because of 5xx answers, connection errors or malformed bodies."""

    default_code = "server"


def call_error(
    code: ErrorCode,
    message: str,
    *,
    kind: str,
    model: str,
    retry_after: float | None = None,
    status: int | None = None,
    attempts: int = 0,
) -> LLMCallError:
    """The LLMCallError (with the matching DSPy subclass) for a call given up on."""
    cls: type[LLMCallError] = LLMCallError
    if code is ErrorCode.LLM_RATE_LIMITED:
        cls = LLMRateLimited
    elif kind in (TIMEOUT, DEADLINE):
        cls = LLMTimedOut
    elif kind in (CONNECT, SERVER, MALFORMED):
        cls = LLMServerFailed
    return cls(
        code,
        message,
        kind=kind,
        model=model,
        retry_after=retry_after,
        status=status,
        attempts=attempts,
    )


class LLMFailure(NamedTuple):
    """What a failed LM call means for the request: its contract code and Retry-After."""

    code: ErrorCode
    retry_after: float | None


def failure_of(exc: BaseException) -> LLMFailure:
    """(contract code, retry_after) for an LM failure of any kind."""
    if isinstance(exc, LLMCallError):
        return LLMFailure(exc.memesys_code, exc.retry_after)
    if isinstance(exc, LMRateLimitError):
        return LLMFailure(ErrorCode.LLM_RATE_LIMITED, exc.retry_after)
    if isinstance(exc, LMError):
        return LLMFailure(ErrorCode.LLM_UNAVAILABLE, exc.retry_after)
    return LLMFailure(ErrorCode.LLM_UNAVAILABLE, None)
