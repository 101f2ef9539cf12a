"""The contract's JSON errors: the one way the gateway answers a failure.

A failure from the tree carries a runtime or domain code and a raw message; what a client may
see of it is decided here (:func:`public_failure`), and what it may not see goes to the log.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from aiohttp import web

from memesys.errors import ErrorCode, MemesysError, client_message, translate

log = logging.getLogger("memesys.http")


def error(
    code: ErrorCode,
    message: str | None = None,
    *,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """The contract's JSON error: ``code``'s status, ``message`` (else the code's default), and
    on a retryable 429/503 a ``Retry-After`` (``retry_after`` if the failure said, else the
    code's default)."""
    headers = dict(headers or {})
    after = retry_after if retry_after is not None else code.retry_after
    if code.retryable and code.status in (429, 503) and after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(after)))
    body = {"error": {"code": code.value, "message": message or code.message, **extra}}
    return web.json_response(body, status=code.status, headers=headers or None)


def public_failure(code: str, message: str, where: str) -> tuple[ErrorCode, str]:
    """A failure from the tree (a runtime or domain code, its raw message) as the client may
    see it; what the client does not see goes to the log."""
    contract = translate(code)
    if contract is None:
        log.error(
            "%s: failure code %r is not in the contract (answered internal): %s",
            where,
            code,
            message,
        )
        return ErrorCode.INTERNAL, ErrorCode.INTERNAL.message
    shown = client_message(contract, message)
    if shown != message:
        log.log(
            logging.INFO if contract.retryable else logging.WARNING,
            "%s: %s answered as %s: %s",
            where,
            code,
            contract.value,
            message,
        )
    return contract, shown


def failure_error(failure: Any, where: str) -> web.Response:
    """The JSON error for a :class:`~actors.messages.Failure` (a per-failure ``retry_after``
    overrides the code's default when the failure carries one)."""
    code, message = public_failure(failure.code, failure.message, where)
    return error(code, message, retry_after=getattr(failure, "retry_after", None))


def exception_error(exc: MemesysError, where: str) -> web.Response:
    """The JSON error for a failure raised in the gateway's own process (the in-process
    engine's, a store's or a renderer's), with the Retry-After it asked for if any."""
    code, message = public_failure(exc.code, str(exc), where)
    return error(code, message, retry_after=getattr(exc, "retry_after", None))
