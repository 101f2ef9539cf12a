"""The Redis store of memes: records, PNGs, a time index and a topic cache.

Keys, all under one prefix so a shared server stays tidy:

* ``{p}:meme:{id}``     the record, compact JSON
* ``{p}:png:{id}``      the rendered PNG
* ``{p}:memes``         sorted set, score ``created_at``, member ``id`` (newest-first listing)
* ``{p}:cache:{h}``     meme id cached for a caller key; ``h`` is the key's SHA-256 so any
                        topic text maps to a short, safe key
* ``{p}:cachedby:{id}`` set of cache keys pointing to the meme, so delete can clear them

A record that does not parse or validate (:mod:`memesys.storage.records`) is quarantined
(:mod:`memesys.storage.quarantine`) and treated as absent: ``get`` answers None, a listing skips
it, a corrupt cache entry is a miss (so the meme is made again), a corrupt PNG is not served.
Every Redis operation goes through an :class:`~memesys.storage.availability.Availability`:
while Redis is down, operations fail at once with ``StoreDown`` (a ``StoreError``). The client
never decodes replies (``decode_responses=False``): what redis-py types as ``bytes | str`` is
bytes here.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import time
from collections.abc import Iterator
from typing import Any, cast

import redis
from redis.client import Pipeline

from memesys.domain.ids import valid_id
from memesys.errors import ErrorCode
from memesys.storage.availability import AlwaysUp, Availability, availability_for
from memesys.storage.connection import connect
from memesys.storage.erasures import Erasures
from memesys.storage.errors import StoreDown, StoreError, TooLate
from memesys.storage.eventlog import CACHED, COMPLETED, ERASED, Event, EventLog, VersionConflict
from memesys.storage.projections import Keys, meme_entity, writes
from memesys.storage.quarantine import Quarantine, fingerprint, is_wrong_type
from memesys.storage.records import (
    cache_problem,
    meme_problem,
    parse_json,
    png_problem,
)
from memesys.storage.sealing import Sealer

__all__ = ["InvalidCursor", "MemeStore", "StoreDown", "StoreError"]


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
    """Memes in Redis; every Redis failure surfaces as StoreError (StoreDown while Redis is
    known to be down); poison records are quarantined and treated as absent."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "memesys",
        availability: Availability | None = None,
        quarantine: Quarantine | None = None,
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        self._r = client
        self._p = prefix
        self._index = f"{prefix}:memes"
        self.availability = availability or AlwaysUp()
        self.quarantine = quarantine or Quarantine(client, prefix)
        self.log = EventLog(client, prefix)
        self.sealer = Sealer(client, prefix)
        self.keys = Keys(prefix)
        self.erasures = Erasures(client, prefix)

    @classmethod
    def open(
        cls,
        url: str,
        user: str,
        prefix: str,
        quarantine_ttl_s: int,
        backoff_initial_s: float,
        backoff_max_s: float,
    ) -> MemeStore:
        """The store as each user of Redis (an actor, the in-process engine, the gateway's
        cache reader) wires it: a client of its own on ``url``, the user's own up/down view
        (named ``user`` in its log lines) and the quarantine. :meth:`close` closes the client."""
        client = connect(url)
        availability = availability_for(url, user, backoff_initial_s, backoff_max_s)
        return cls(client, prefix, availability, Quarantine(client, prefix, quarantine_ttl_s))

    @property
    def client(self) -> redis.Redis:
        """The Redis client the store runs on (the task records share it)."""
        return self._r

    def close(self) -> None:
        self._r.close()

    def hit_keys(self, key: str) -> tuple[str, str]:
        """Where a cache hit is read: key's cache entry, and the prefix of the meme record
        its id names (for a reader that fetches both at once, :mod:`memesys.storage.hits`)."""
        return self._cache_key(key), self._meme_key("")

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
        with self.availability.guard(what):
            yield

    def answers(self) -> bool:
        """Whether Redis answers now, asked with a PING as an operation (a failure marks it
        down, so the next requests fail fast): before spending tokens on a fresh meme. Never
        raises. A health report that must answer within its own bound is
        ``availability.health()``."""
        try:
            with self._guard("pinging"):
                return bool(self._r.ping())
        except StoreError:
            return False

    def _set_aside(
        self,
        kind: str,
        record_id: str,
        key: str,
        reason: str,
        raw: bytes | None = None,
        index: tuple[str, str] | None = None,
    ) -> None:
        """Quarantine ``key`` (read as ``raw``; None: it has the wrong type). Inside a guard."""
        wrong_type = (
            None if raw is not None else cast(bytes, self._r.type(key)).decode(errors="replace")
        )
        self.quarantine.move(
            kind, record_id, key, fingerprint(raw, wrong_type), reason, index=index
        )

    def _read(self, kind: str, record_id: str, key: str) -> bytes | None:
        """GET ``key``; a key of the wrong type is quarantined and reads as None."""
        try:
            return cast(bytes | None, self._r.get(key))
        except redis.ResponseError as exc:
            if not is_wrong_type(exc):
                raise
            self._set_aside(kind, record_id, key, "not a string key")
            return None

    def _meme(self, meme_id: str, raw: bytes) -> dict[str, Any] | None:
        """The record decoded, or None after quarantining it (inside a guard)."""
        meme, problem = parse_json(raw)
        problem = problem or meme_problem(meme_id, meme)
        if problem is None:
            return cast(dict[str, Any], meme)  # a record without its problem is an object
        self._set_aside(
            "meme", meme_id, self._meme_key(meme_id), problem, raw=raw, index=("zrem", self._index)
        )
        return None

    def save(self, meme: dict[str, Any], png: bytes) -> None:
        """Record the meme's ``completed`` event (its record sealed) and, in the same script, its
        projection (record, index entry) and PNG: no reader sees half a meme."""
        meme_id = meme.get("id")
        created_at = meme.get("created_at")
        if not isinstance(meme_id, str) or not valid_id(meme_id):
            raise ValueError(f"invalid meme id {meme_id!r}")
        if isinstance(created_at, bool) or not isinstance(created_at, (int, float)):
            raise ValueError(f"meme {meme_id}: created_at must be epoch seconds")
        if not math.isfinite(created_at):
            raise ValueError(f"meme {meme_id}: created_at must be finite")
        if not isinstance(png, bytes):
            raise TypeError(f"meme {meme_id}: png must be bytes")
        problem = meme_problem(meme_id, meme) or png_problem(png)
        if problem is not None:  # never write what a reader would quarantine
            raise ValueError(f"meme {meme_id}: {problem}")
        record = json.dumps(meme, separators=(",", ":"), ensure_ascii=False)
        entity = meme_entity(meme_id)
        trace = str(meme.get("trace_id") or "")
        with self._guard(f"saving meme {meme_id}"):
            event = Event(
                COMPLETED,
                entity,
                {"id": meme_id, "created_at": float(created_at), "format": meme.get("format")},
                correlation=trace,
                cause="request",
                trace=trace,
                sealed=self.sealer.seal(entity, {"record": record}),
            )
            projection = writes(self.keys, event, lambda: {"record": record})
            try:
                self.log.append(event, 0, [*projection, ("SET", self._png_key(meme_id), png)])
            except VersionConflict:
                if not self._r.exists(self._meme_key(meme_id)):
                    raise
                # a save retried after its first try was written (its reply lost): done once

    def keep(
        self,
        meme: dict[str, Any],
        png: bytes,
        cache_key: str | None,
        cache_ttl_s: int,
        not_after: float | None = None,
    ) -> str:
        """Save a meme just made, and cache it under ``cache_key`` unless that is None (a
        fresh meme); returns its id. Past ``not_after`` (the request's wall-clock deadline)
        nothing is saved (:class:`TooLate`): the thread that saves may start late, and the
        client has had its 504 by then."""
        if not_after is not None and time.time() >= not_after:
            raise TooLate(
                f"meme {meme['id']}: its request's deadline passed before the save; "
                "it was not saved"
            )
        self.save(meme, png)
        meme_id: str = meme["id"]
        if cache_key:
            self.cache_put(cache_key, meme_id, cache_ttl_s)
        return meme_id

    def get(self, meme_id: str) -> dict[str, Any] | None:
        """The meme's record, or None if it does not exist (or the id is not a valid id)."""
        if not valid_id(meme_id):
            return None
        with self._guard(f"reading meme {meme_id}"):
            raw = self._read("meme", meme_id, self._meme_key(meme_id))
            return None if raw is None else self._meme(meme_id, raw)

    def get_png(self, meme_id: str) -> bytes | None:
        """The meme's PNG, or None if it does not exist, is not a whole PNG (quarantined), or
        the id is not a valid id."""
        if not valid_id(meme_id):
            return None
        with self._guard(f"reading the png of meme {meme_id}"):
            key = self._png_key(meme_id)
            png = self._read("png", meme_id, key)
            problem = None if png is None else png_problem(png)
            if problem is not None:
                self._set_aside("png", meme_id, key, problem, raw=png)
                return None
            return png

    def list(
        self, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of memes, newest first, and the cursor of the next page (None at the end).

        The cursor is the (created_at, id) of the last index entry returned, so the next page
        starts strictly after it: memes saved meanwhile are newer and never shift a page.
        Ties in created_at are ordered by id, descending, as Redis orders them.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        entries: list[tuple[bytes, float]]
        with self._guard("listing memes"):
            if cursor is None:
                entries = cast(
                    list[tuple[bytes, float]],
                    self._r.zrevrange(self._index, 0, limit, withscores=True),
                )
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
            page = [(m.decode(errors="replace"), s) for m, s in entries[:limit]]
            raws = cast(
                list[bytes | None],
                self._r.mget([self._meme_key(i) for i, _ in page]) if page else [],
            )
            # An index entry whose record vanished (deleted meanwhile) is skipped, not an
            # error; a corrupt record is quarantined and skipped: the page has the good ones.
            memes = [
                meme
                for meme in (
                    self._meme(i, raw) for (i, _), raw in zip(page, raws) if raw is not None
                )
                if meme is not None
            ]
        more = len(entries) > limit
        return memes, _encode_cursor(page[-1][1], page[-1][0]) if more else None

    def delete(self, meme_id: str) -> bool:
        """Erase the meme everywhere, incl. cache entries pointing to it and quarantined copies
        of its record or PNG; True if any of it existed. An erasure that deleted something is
        counted (:class:`~memesys.storage.erasures.Erasures`) in the same transaction: the
        server's files owe a rewrite that drops it (:mod:`memesys.storage.rewrites`)."""
        if not valid_id(meme_id):
            return False
        cachedby = self._cachedby_key(meme_id)

        def erase(pipe: Pipeline) -> None:
            # Only cache keys that still point to this meme are dropped; WATCH on them makes a
            # concurrent re-point or cache_put restart the transaction instead of being lost.
            cache_keys = list(pipe.smembers(cachedby))
            if cache_keys:
                pipe.watch(*cache_keys)  # type: ignore[no-untyped-call]  # untyped in redis-py
            targets = pipe.mget(cache_keys) if cache_keys else []
            pointing = [k for k, t in zip(cache_keys, targets) if t == meme_id.encode()]
            logged = pipe.xlen(self.log.stream(entity))
            quarantined = (
                self.quarantine.key_of("meme", meme_id),
                self.quarantine.key_of("png", meme_id),
            )
            present = pipe.exists(
                self._meme_key(meme_id),
                self._png_key(meme_id),
                *quarantined,
                self.sealer.key_name(entity),
            )
            pipe.multi()
            pipe.delete(self._meme_key(meme_id))
            pipe.delete(self._png_key(meme_id))
            pipe.delete(cachedby, *pointing)
            pipe.zrem(self._index, meme_id)
            pipe.delete(*quarantined)
            if present:  # the disk owes a rewrite (memesys.storage.erasures)
                self.erasures.count_in(pipe)
            if logged:  # an id the log never saw (a client's guess) adds nothing to it
                digests = [cast(bytes, k).decode().rsplit(":", 1)[1] for k in pointing]
                event = Event(ERASED, entity, {"id": meme_id, "caches": digests}, "", "erasure", "")
                # the same deletes again, as the event's projection: what a rebuild runs
                self.log.append_in(pipe, event, writes=writes(self.keys, event, dict))
                pipe.delete(self.sealer.key_name(entity))  # crypto-shredding: the key goes

        entity = meme_entity(meme_id)
        with self._guard(f"deleting meme {meme_id}"):
            # the record is watched too: a save or a quarantine racing the erasure restarts it
            replies = cast(list[int], self._r.transaction(erase, cachedby, self._meme_key(meme_id)))
        record, png, _, indexed, copies = replies[:5]
        return bool(record or png or indexed or copies)

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
        digest = cache_key.rsplit(":", 1)[1]
        cachedby = self._cachedby_key(meme_id)
        meme_key = self._meme_key(meme_id)

        def put(pipe: Pipeline) -> None:
            if not pipe.exists(meme_key):
                return
            previous = cast(bytes | None, pipe.get(cache_key))
            set_ttl = pipe.ttl(cachedby)  # -2 missing, -1 no expiry (never set by us)
            pipe.multi()
            pipe.set(cache_key, meme_id, ex=ttl_s)
            pipe.sadd(cachedby, cache_key)
            pipe.expire(cachedby, max(ttl_s, set_ttl))
            old_id = previous.decode(errors="replace") if previous is not None else None
            if old_id is not None and old_id != meme_id and valid_id(old_id):
                pipe.srem(self._cachedby_key(old_id), cache_key)
            data = {"meme": meme_id, "cache": digest, "expires_at": time.time() + ttl_s}
            self.log.append_in(pipe, Event(CACHED, meme_entity(meme_id), data, "", "cache", ""))

        with self._guard(f"caching meme {meme_id}"):
            self._r.transaction(put, meme_key, cache_key, cachedby)

    def cache_get(self, key: str) -> str | None:
        """The meme id cached for key, only while that meme still exists; a corrupt entry is
        quarantined and is a miss."""
        return self._cached_id(key, exists=True)

    def _cached_id(self, key: str, exists: bool) -> str | None:
        """The meme id of key's cache entry (``exists``: only while that meme exists)."""
        cache_key = self._cache_key(key)
        cache_id = cache_key.rsplit(":", 1)[1]
        with self._guard("reading the meme cache"):
            raw = self._read("cache", cache_id, cache_key)
            if raw is None:
                return None
            problem = cache_problem(raw)
            if problem is not None:
                self._set_aside("cache", cache_id, cache_key, problem, raw=raw)
                return None
            meme_id = raw.decode("ascii")
            if exists and not self._r.exists(self._meme_key(meme_id)):
                return None
        return meme_id

    def cached(self, key: str) -> dict[str, Any] | None:
        """The meme cached for key (None: a miss): two reads, the entry and the meme (a meme
        erased meanwhile reads as None: a miss)."""
        meme_id = self._cached_id(key, exists=False)
        return self.get(meme_id) if meme_id else None

    def quarantined(self) -> dict[str, int]:
        """Records quarantined so far under this prefix, by kind."""
        with self._guard("reading the quarantine counts"):
            return self.quarantine.counts()
