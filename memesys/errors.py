"""The one error vocabulary: every failure code the daemon can send to a client, defined once.

Each :class:`ErrorCode` knows its HTTP status, whether the same request may succeed later
(``retryable``), the ``Retry-After`` the gateway sends by default (seconds; ``None`` for none),
a clear default message, and whether the failure's own message may reach the client
(``detail``: a refusal explains itself; an infrastructure failure never shows its insides).

The actors runtime keeps its own plain codes (``crashed``, ``dead_address``, ...): they are
translated here, in :func:`translate`, and nowhere else. :func:`client_message` is the last
word on what a client reads: no actor address, socket path, URL or Python type name.

Plain Python (enum, re): importable by every layer without actors, dspy or aiohttp.
"""

from __future__ import annotations

import re
from enum import StrEnum


class ErrorCode(StrEnum):
    """A contract code; its value is what clients see in ``{"error": {"code": ...}}``."""

    # value, status, retryable, retry_after (s), default message, detail
    MALFORMED_JSON = ("malformed_json", 400, False, None, "the body is not valid JSON", True)
    UNAUTHORIZED = (
        "unauthorized",
        401,
        False,
        None,
        "a valid token is required: send Authorization: Bearer <token>",
        True,
    )
    NOT_FOUND = ("not_found", 404, False, None, "no such resource", True)
    METHOD_NOT_ALLOWED = (
        "method_not_allowed",
        405,
        False,
        None,
        "this method is not allowed on this path",
        True,
    )
    NOT_ACCEPTABLE = (
        "not_acceptable",
        406,
        False,
        None,
        "this answer cannot be given in a media type the Accept header allows",
        True,
    )
    REQUEST_TIMEOUT = (
        "request_timeout",
        408,
        False,
        None,
        "the request body did not arrive in time",
        True,
    )
    BODY_TOO_LARGE = ("body_too_large", 413, False, None, "the body is too large", True)
    UNSUPPORTED_MEDIA_TYPE = (
        "unsupported_media_type",
        415,
        False,
        None,
        "the body must be application/json",
        True,
    )
    TASK_FINISHED = (
        "task_finished",
        409,
        False,
        None,
        "the task has already finished; only a queued or running task can be cancelled",
        True,
    )
    INVALID_FIELD = ("invalid_field", 422, False, None, "a field is invalid", True)
    INAPPROPRIATE = (
        "inappropriate",
        422,
        False,
        None,
        "the topic or its caption is inappropriate",
        True,
    )
    RATE_LIMITED = (
        "rate_limited",
        429,
        True,
        1,
        "this client's request rate limit is reached; retry later",
        True,
    )
    INTERNAL = ("internal", 500, False, None, "internal error; see the daemon log", False)
    BAD_OUTPUT = ("bad_output", 502, False, None, "the model's output was unusable", True)
    RENDER_ERROR = ("render_error", 502, False, None, "the meme could not be rendered", False)
    OVERLOADED = ("overloaded", 503, True, 1, "the daemon is at capacity; retry later", False)
    UNAVAILABLE = (
        "unavailable",
        503,
        True,
        1,
        "a part of the daemon is restarting or stopping; retry later",
        False,
    )
    WORKER_LOST = (
        "worker_lost",
        503,
        True,
        1,
        "the worker handling the request failed and is restarting; retry later",
        False,
    )
    STORE_ERROR = ("store_error", 503, True, 2, "the store is unavailable; retry later", False)
    LLM_UNAVAILABLE = (
        "llm_unavailable",
        503,
        True,
        5,
        "the language model is unavailable; retry later",
        False,
    )
    LLM_RATE_LIMITED = (
        "llm_rate_limited",
        503,
        True,
        5,
        "the language model's rate limit is reached; retry later",
        False,
    )
    BUDGET_EXHAUSTED = (
        "budget_exhausted",
        503,
        True,
        3600,
        "the daily token budget is spent; retry later",
        False,
    )
    VERIFICATION_UNAVAILABLE = (
        "verification_unavailable",
        503,
        True,
        5,
        "the appropriateness check could not run; retry later",
        False,
    )
    TIMEOUT = ("timeout", 504, True, None, "the request did not finish within its deadline", False)

    def __new__(
        cls,
        value: str,
        status: int,
        retryable: bool,
        retry_after: int | None,
        message: str,
        detail: bool,
    ) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.retryable = retryable
        member.retry_after = retry_after
        member.message = message
        member.detail = detail
        return member

    status: int
    retryable: bool
    retry_after: int | None
    message: str
    detail: bool


# The runtime's own codes (the values of actors.messages.FailureCode, documented there) -> the
# contract. ``crashed``: the handler raised and the worker restarts, so for the client the
# worker was lost; ``dead_address``: the target restarted under a new address; ``error``: an
# async handler raised (a bug); ``bad_request``: a runtime command the runtime refused, never
# a client's fault. ``unknown_request`` is no longer sent by the runtime, kept for old records.
RUNTIME_CODES: dict[str, ErrorCode] = {
    "crashed": ErrorCode.WORKER_LOST,
    "worker_lost": ErrorCode.WORKER_LOST,
    "overloaded": ErrorCode.OVERLOADED,
    "unavailable": ErrorCode.UNAVAILABLE,
    "dead_address": ErrorCode.UNAVAILABLE,
    "timeout": ErrorCode.TIMEOUT,
    "error": ErrorCode.INTERNAL,
    "cancelled": ErrorCode.UNAVAILABLE,  # only its asker, who cancelled it, could hear it
    "bad_request": ErrorCode.INTERNAL,
    "unknown_request": ErrorCode.INTERNAL,
}
_CONTRACT_CODES: dict[str, ErrorCode] = {code.value: code for code in ErrorCode}


def translate(code: str) -> ErrorCode | None:
    """The contract code for a failure code from anywhere in the tree; None if unknown (the
    caller answers ``internal`` and logs it, never guesses)."""
    return RUNTIME_CODES.get(code) or _CONTRACT_CODES.get(code)


MAX_MESSAGE_CHARS = 500

_LEAKS = re.compile(
    "|".join(
        (
            r"ActorAddr",  # an actor's address
            r"\bunix socket\b",
            r"\.sock\b",  # a socket
            r"\b[a-z][a-z0-9+.-]*://",  # a URL (redis://, http://)
            r"(?<![\w/.:])/(?!v1/)[\w.@+-]+/[\w.@+/-]*",  # a filesystem path (not /v1/...)
            r"\b[A-Z][A-Za-z0-9_]*(?:Error|Exception|Warning|Exit|Interrupt)\b",  # a Python type
            r"Traceback \(most recent call last\)",
            r'\bFile "',
            r" at 0x[0-9a-fA-F]+",
        )
    )
)


def leaks(message: str) -> bool:
    """Whether ``message`` shows something a client must never see."""
    return _LEAKS.search(message) is not None


def client_message(code: ErrorCode, message: str | None) -> str:
    """What a client reads for a failure with ``code`` whose own message is ``message``: that
    message when the code shows detail and it leaks nothing, else the code's default."""
    if not code.detail or not message or leaks(message):
        return code.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1].rstrip() + "…"
    return message


class MemesysError(Exception):
    """Base of each layer's error root (``PipelineError``, ``StoreError``, ``RenderError``,
    ``InvalidField``): an error that answers a request knows its contract code."""

    code: ErrorCode = ErrorCode.INTERNAL
