"""The storage layer's errors: Redis failed, or Redis is known to be down."""

from __future__ import annotations

from memesys.errors import ErrorCode, MemesysError


class StoreError(MemesysError):
    """The storage layer's root, and itself: Redis was unreachable or failed; the message says
    which operation on which record."""

    code = ErrorCode.STORE_ERROR


class TooLate(StoreError):
    """A save asked for after its deadline: not made (the client has had its 504, and the meme
    must not appear after it)."""

    code = ErrorCode.TIMEOUT


class StoreDown(StoreError):
    """Redis is known to be down (a recent operation could not reach it) and its next probe is
    not due yet: the operation was not attempted at all, so it fails at once."""
