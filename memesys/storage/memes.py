"""The Redis store of memes: records, PNGs, a time index and a topic cache.

Keys, all under one prefix so a shared server stays tidy:

* ``{p}:meme:{id}``     the record, compact JSON
* ``{p}:png:{id}``      the rendered PNG
* ``{p}:memes``         sorted set, score ``created_at``, member ``id`` (newest-first listing)
* ``{p}:cache:{h}``     meme id cached for a caller key; ``h`` is the key's SHA-256 so any
                        topic text maps to a short, safe key
* ``{p}:cachedby:{id}`` set of cache keys pointing to the meme, so delete can clear them
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

import redis
from redis.client import Pipeline

from memesys.domain.ids import valid_id
from memesys.errors import ErrorCode, MemesysError


class StoreError(MemesysError):
    """The storage layer's root, and itself: Redis was unreachable or failed; the message says
    which operation on which meme."""

    code = ErrorCode.STORE_ERROR


class InvalidCursor(StoreError, ValueError):
    """A page cursor this server never issued: the client's fault, not the store's."""

    code = ErrorCode.INVALID_FIELD


def _encode_cursor(score: float, meme_id: str) -> str:
    raw = f"{score.hex()}|{meme_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    """Inverse of _encode_cursor; InvalidCursor for anything a client made up."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score_hex, meme_id = raw.split("|")
        score = float.fromhex(score_hex)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("cursor: is not a cursor this server issued") from None
    if not valid_id(meme_id) or not math.isfinite(score):
        raise InvalidCursor("cursor: is not a cursor this server issued")
    return score, meme_id


class MemeStore:
    """Memes in Redis; every Redis failure surfaces as StoreError."""

    def __init__(self, client: redis.Redis, prefix: str = "memesys") -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        self._r = client
        self._p = prefix
        self._index = f"{prefix}:memes"

    def _meme_key(self, meme_id: str) -> str:
        return f"{self._p}:meme:{meme_id}"

    def _png_key(self, meme_id: str) -> str:
        return f"{self._p}:png:{meme_id}"

    def _cachedby_key(self, meme_id: str) -> str:
        return f"{self._p}:cachedby:{meme_id}"

    def _cache_key(self, key: str) -> str:
        return f"{self._p}:cache:{hashlib.sha256(key.encode()).hexdigest()}"

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise StoreError(f"redis failed while {what}: {exc}") from exc

    def ping(self) -> bool:
        """Whether Redis answers; for health checks, so it never raises."""
        try:
            return bool(self._r.ping())
        except redis.RedisError:
            return False

    def save(self, meme: dict, png: bytes) -> None:
        """Store record, PNG and index entry in one MULTI/EXEC: no reader sees half a meme."""
        meme_id = meme.get("id")
        created_at = meme.get("created_at")
        if not valid_id(meme_id):
            raise ValueError(f"invalid meme id {meme_id!r}")
        if isinstance(created_at, bool) or not isinstance(created_at, (int, float)):
            raise ValueError(f"meme {meme_id}: created_at must be epoch seconds")
        if not math.isfinite(created_at):
            raise ValueError(f"meme {meme_id}: created_at must be finite")
        if not isinstance(png, bytes):
            raise TypeError(f"meme {meme_id}: png must be bytes")
        record = json.dumps(meme, separators=(",", ":"), ensure_ascii=False).encode()
        with self._guard(f"saving meme {meme_id}"):
            pipe = self._r.pipeline(transaction=True)
            pipe.set(self._meme_key(meme_id), record)
            pipe.set(self._png_key(meme_id), png)
            pipe.zadd(self._index, {meme_id: float(created_at)})
            pipe.execute()

    def get(self, meme_id: str) -> dict | None:
        """The meme's record, or None if it does not exist (or the id is not a valid id)."""
        if not valid_id(meme_id):
            return None
        with self._guard(f"reading meme {meme_id}"):
            raw = self._r.get(self._meme_key(meme_id))
        return None if raw is None else self._decode(meme_id, raw)

    def get_png(self, meme_id: str) -> bytes | None:
        """The meme's PNG, or None if it does not exist (or the id is not a valid id)."""
        if not valid_id(meme_id):
            return None
        with self._guard(f"reading the png of meme {meme_id}"):
            return self._r.get(self._png_key(meme_id))

    def list(self, limit: int = 20, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """A page of memes, newest first, and the cursor of the next page (None at the end).

        The cursor is the (created_at, id) of the last index entry returned, so the next page
        starts strictly after it: memes saved meanwhile are newer and never shift a page.
        Ties in created_at are ordered by id, descending, as Redis orders them.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with self._guard("listing memes"):
            if cursor is None:
                entries = self._r.zrevrange(self._index, 0, limit, withscores=True)
            else:
                score, last_id = _decode_cursor(cursor)
                pipe = self._r.pipeline(transaction=False)
                pipe.zrangebyscore(self._index, score, score)
                pipe.zrevrangebyscore(
                    self._index, f"({score!r}", "-inf", start=0, num=limit + 1, withscores=True
                )
                same_score, older = pipe.execute()
                after = sorted((m for m in same_score if m.decode() < last_id), reverse=True)
                entries = [(m, score) for m in after] + older
            page = [(m.decode(), s) for m, s in entries[:limit]]
            raws = self._r.mget([self._meme_key(i) for i, _ in page]) if page else []
        # An index entry whose record vanished (deleted meanwhile) is skipped, not an error.
        memes = [self._decode(i, raw) for (i, _), raw in zip(page, raws) if raw is not None]
        more = len(entries) > limit
        return memes, _encode_cursor(page[-1][1], page[-1][0]) if more else None

    def delete(self, meme_id: str) -> bool:
        """Erase the meme everywhere, incl. cache entries pointing to it; True if it existed."""
        if not valid_id(meme_id):
            return False
        cachedby = self._cachedby_key(meme_id)

        def erase(pipe: Pipeline) -> None:
            # Only cache keys that still point to this meme are dropped; WATCH on them makes a
            # concurrent re-point or cache_put restart the transaction instead of being lost.
            cache_keys = list(pipe.smembers(cachedby))
            if cache_keys:
                pipe.watch(*cache_keys)
            targets = pipe.mget(cache_keys) if cache_keys else []
            pointing = [k for k, t in zip(cache_keys, targets) if t == meme_id.encode()]
            pipe.multi()
            pipe.delete(self._meme_key(meme_id))
            pipe.delete(self._png_key(meme_id), cachedby, *pointing)
            pipe.zrem(self._index, meme_id)

        with self._guard(f"deleting meme {meme_id}"):
            deleted_record, _, removed_from_index = self._r.transaction(erase, cachedby)
        return bool(deleted_record or removed_from_index)

    def cache_put(self, key: str, meme_id: str, ttl_s: int) -> None:
        """Remember meme_id for key for ttl_s seconds; a no-op if the meme no longer exists.

        Keeps {p}:cachedby:{id} in step (and expiring no earlier than its entries) so delete
        can find every cache entry; a key re-pointed to another meme leaves the old set.
        """
        if not valid_id(meme_id):
            raise ValueError(f"invalid meme id {meme_id!r}")
        if not isinstance(ttl_s, int) or ttl_s < 1:
            raise ValueError("ttl_s must be a whole number of seconds, at least 1")
        cache_key = self._cache_key(key)
        cachedby = self._cachedby_key(meme_id)
        meme_key = self._meme_key(meme_id)

        def put(pipe: Pipeline) -> None:
            if not pipe.exists(meme_key):
                return
            previous = pipe.get(cache_key)
            set_ttl = pipe.ttl(cachedby)  # -2 missing, -1 no expiry (never set by us)
            pipe.multi()
            pipe.set(cache_key, meme_id, ex=ttl_s)
            pipe.sadd(cachedby, cache_key)
            pipe.expire(cachedby, max(ttl_s, set_ttl))
            old_id = previous.decode(errors="replace") if previous is not None else None
            if old_id is not None and old_id != meme_id and valid_id(old_id):
                pipe.srem(self._cachedby_key(old_id), cache_key)

        with self._guard(f"caching meme {meme_id}"):
            self._r.transaction(put, meme_key, cache_key, cachedby)

    def cache_get(self, key: str) -> str | None:
        """The meme id cached for key, only while that meme still exists."""
        cache_key = self._cache_key(key)
        with self._guard("reading the meme cache"):
            raw = self._r.get(cache_key)
            if raw is None:
                return None
            meme_id = raw.decode(errors="replace")
            if not valid_id(meme_id) or not self._r.exists(self._meme_key(meme_id)):
                return None
        return meme_id

    def _decode(self, meme_id: str, raw: bytes) -> dict[str, Any]:
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"record of meme {meme_id} is not valid JSON: {exc}") from exc
