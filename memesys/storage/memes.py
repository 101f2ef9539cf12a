"""The store of memes: records, a time index and a topic cache in Redis; PNGs as files.

Keys, all under one prefix so a shared server stays tidy:

* ``{p}:meme:{id}``     the record, compact JSON; its ``image`` is the SHA-256 and size of the
                        PNG, a file of the image directory (:mod:`memesys.storage.images`)
* ``{p}:png:{id}``      the PNG of a meme saved before PNGs were files (its record has no
                        ``image``), until :meth:`MemeStore.move_legacy_pngs` moves it out
* ``{p}:memes``         sorted set, score ``created_at``, member ``id`` (newest-first listing)
* ``{p}:cache:{h}``     meme id cached for a caller key; ``h`` is the key's SHA-256 so any
                        topic text maps to a short, safe key
* ``{p}:cachedby:{id}`` set of cache keys pointing to the meme, so delete can clear them
* ``{p}:images:pending`` sorted set of image files in the making or being erased, member
                        ``{id}:{digest}``, score when the save began (0: an erasure), so that
                        files a crash left behind are removed (:meth:`MemeStore.tidy_images`)
* ``{p}:images:legacy_moved`` set once no ``{p}:png:{id}`` is left (:meth:`move_legacy_pngs`)

A meme is saved in three steps: its entry in ``images:pending``, its PNG's files (written and
fsynced), then record, index entry and the end of its pending entry in one MULTI/EXEC; so no
reader sees a record whose picture is not on disk. An erasure deletes the keys and enters the
meme in ``images:pending`` in one MULTI/EXEC, then removes its files.

A record that does not parse or validate (:mod:`memesys.storage.records`) is quarantined
(:mod:`memesys.storage.quarantine`) and treated as absent: ``get`` answers None, a listing skips
it, a corrupt cache entry is a miss (so the meme is made again), a corrupt PNG is not served
(:class:`ImageLost`, a 404 saying so; a PNG file is moved to the image directory's quarantine).
Every Redis operation goes through an :class:`~memesys.storage.availability.Availability`:
while Redis is down, operations fail at once with ``StoreDown`` (a ``StoreError``). The client
never decodes replies (``decode_responses=False``): what redis-py types as ``bytes | str`` is
bytes here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Collection, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, cast

import redis
from redis.client import Pipeline

from memesys.domain.events import CACHED, COMPLETED, ERASED
from memesys.domain.ids import cursor_position, page_cursor, valid_id
from memesys.domain.images import image_ref, valid_digest
from memesys.domain.messages import MemeImage
from memesys.errors import ErrorCode
from memesys.storage.availability import (
    AlwaysUp,
    Availability,
    availability_for,
    write_probe,
)
from memesys.storage.connection import connect
from memesys.storage.erasures import Erasures
from memesys.storage.errors import StoreDown, StoreError, TooLate
from memesys.storage.eventlog import PREVIOUS, Event, EventLog, VersionConflict
from memesys.storage.images import ImageFiles
from memesys.storage.journal import MemeJournal, Runner, in_thread
from memesys.storage.projections import Keys, meme_entity, writes
from memesys.storage.projector import projections_behind
from memesys.storage.quarantine import Quarantine, fingerprint, is_wrong_type
from memesys.storage.records import (
    cache_problem,
    image_problem,
    meme_problem,
    parse_json,
    png_problem,
)
from memesys.storage.sealing import Sealer

__all__ = ["ImageLost", "InvalidCursor", "MemeStore", "StoreDown", "StoreError"]

log = logging.getLogger(__name__)

# An image file whose save began this long ago and never finished was left by a crash (a save
# is bounded by its request's deadline: the gateway's 30 s, a task's 120 s, by default).
PENDING_GRACE_S = 600.0
TIDY_BATCH = 100  # pending entries one tidy_images call settles at most
LEGACY_SCAN_COUNT = 1000  # keys SCAN looks at per round trip when looking for PNGs in Redis


class ImageLost(StoreError):
    """A meme whose PNG file is missing or was corrupt (now quarantined): an expected
    condition, answered 404 with this message, never a crash."""

    code = ErrorCode.NOT_FOUND


class InvalidCursor(StoreError, ValueError):
    """A page cursor this server never issued: the client's fault, not the store's."""

    code = ErrorCode.INVALID_FIELD


def _decode_cursor(cursor: str) -> tuple[float, str]:
    """The position a cursor names; InvalidCursor for a string that is not a cursor."""
    position = cursor_position(cursor)
    if position is None:
        raise InvalidCursor("cursor: is not a cursor this server issued")
    return position


def _digest_of(raw: bytes | None) -> str:
    """The PNG digest a raw meme record names, or "" (none, or the record does not parse)."""
    meme, problem = parse_json(raw) if raw is not None else (None, "absent")
    image = meme.get("image") if problem is None and isinstance(meme, dict) else None
    digest = image.get("sha256") if isinstance(image, dict) else None
    return digest if isinstance(digest, str) and valid_digest(digest) else ""


def _in_time(meme_id: str, not_after: float | None) -> None:
    if not_after is not None and time.time() >= not_after:
        raise TooLate(
            f"meme {meme_id}: its request's deadline passed before the save; it was not saved"
        )


class MemeStore:
    """Memes in Redis, their PNGs as files (``images``); every Redis or image directory
    failure surfaces as StoreError (StoreDown while Redis is known to be down); poison
    records are quarantined and treated as absent."""

    def __init__(
        self,
        client: redis.Redis,
        images: ImageFiles,
        prefix: str = "memesys",
        availability: Availability | None = None,
        quarantine: Quarantine | None = None,
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        self._r = client
        self.images = images
        self._p = prefix
        self._pending = f"{prefix}:images:pending"
        self._legacy_moved = f"{prefix}:images:legacy_moved"
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
        image_dir: str,
        quarantine_ttl_s: int,
        backoff_initial_s: float,
        backoff_max_s: float,
        disk: str = "",
    ) -> MemeStore:
        """The store as each user of Redis (an actor, the in-process engine, the gateway's
        cache reader) wires it: a client of its own on ``url``, the PNGs under ``image_dir``,
        the user's own up/down view (named ``user`` in its log lines; ``disk``: the embedded
        server's data directory) and the quarantine. :meth:`close` closes the client."""
        client = connect(url)
        availability = availability_for(url, user, prefix, backoff_initial_s, backoff_max_s, disk)
        return cls(
            client,
            ImageFiles(Path(image_dir)),
            prefix,
            availability,
            Quarantine(client, prefix, quarantine_ttl_s),
        )

    @property
    def client(self) -> redis.Redis:
        """The Redis client the store runs on (the task records share it)."""
        return self._r

    def close(self) -> None:
        self._r.close()

    def hit_keys(self, key: str) -> tuple[str, str]:
        """Where a cache hit is read: key's cache entry, and the prefix of the meme record
        its id names (for a reader that fetches both at once, :mod:`memesys.storage.hits`)."""
        return self._cache_key(key), self.keys.meme("")

    def _cache_key(self, key: str) -> str:
        return self.keys.cache(hashlib.sha256(key.encode()).hexdigest())

    @contextlib.contextmanager
    def _guard(self, what: str, write: bool = False) -> Iterator[None]:
        with self.availability.guard(what, write):
            yield

    @staticmethod
    @contextlib.contextmanager
    def _on_disk(what: str) -> Iterator[None]:
        """A failure of the image directory (full, read-only, unmounted) is a StoreError."""
        try:
            yield
        except OSError as exc:
            raise StoreError(f"the image directory failed {what}: {exc}") from exc

    def answers(self) -> bool:
        """Whether Redis answers now and accepts writes, asked with a write that changes
        nothing (:func:`~memesys.storage.availability.write_probe`) as an operation (a failure
        marks it down, so the next requests fail fast): before spending tokens on a fresh
        meme. Never raises. A health report that must answer within its own bound is
        ``availability.health()``."""
        try:
            with self._guard("checking that it accepts writes", write=True):
                write_probe(self._r, self._p)
            return True
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
            "meme",
            meme_id,
            self.keys.meme(meme_id),
            problem,
            raw=raw,
            index=("zrem", self.keys.index),
        )
        return None

    def journal(
        self, meme_id: str, correlation: str, trace: str, run: Runner[object] = in_thread
    ) -> MemeJournal:
        """The journal of a meme about to be made: its progress events, appended in order."""
        return MemeJournal(self.sealer, self._append, meme_id, correlation, trace, run)

    def _append(self, events: list[Event], expected: int, writes: list[Any]) -> None:
        with self._guard(f"recording the events of {events[0].entity}", write=True):
            self.log.append_all(events, expected, writes)

    def save(
        self,
        meme: dict[str, Any],
        png: bytes,
        not_after: float | None = None,
        version: int = 0,
        correlation: str = "",
        events: Sequence[Event] = (),
        staged: str = "",
    ) -> None:
        """Store the PNG's files, then record ``events`` (its journal's last, not appended yet)
        and the meme's ``completed`` event (its record
        sealed) after the ``version`` events its journal appended and, in the same script, its
        projection (record, index entry): no reader sees a meme whose picture is not on disk,
        nor an event without its projection. ``meme["image"]`` must describe ``png``. Past
        ``not_after`` (a wall-clock deadline) nothing is saved (:class:`TooLate`). ``staged``:
        what :meth:`stage_image` returned for this very PNG (its files are in place), or ``""``;
        a picture staged for another caption is the caller's to :meth:`unstage` first."""
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
        problem = meme_problem(meme_id, meme) or png_problem(png) or image_problem(meme, png)
        if problem is not None:  # never write what a reader would quarantine
            raise ValueError(f"meme {meme_id}: {problem}")
        _in_time(meme_id, not_after)
        record = json.dumps(meme, separators=(",", ":"), ensure_ascii=False)
        digest: str = meme["image"]["sha256"]
        pending = f"{meme_id}:{digest}"
        if staged != pending:
            self._put_image(meme_id, png, pending)
        try:
            _in_time(meme_id, not_after)  # the files took the rest of the time
        except TooLate:
            with contextlib.suppress(StoreError):  # else tidy_images removes them later
                self._settle(pending)
            raise
        entity = meme_entity(meme_id)
        trace = str(meme.get("trace_id") or "")
        with self._guard(f"saving meme {meme_id}", write=True):
            event = Event(
                COMPLETED,
                entity,
                {"id": meme_id, "created_at": float(created_at), "format": meme.get("format")},
                correlation=correlation or trace,
                cause=PREVIOUS if version or events else "request",
                trace=trace,
                sealed=self.sealer.seal(entity, {"record": record}),
            )
            projection = writes(self.keys, event, lambda: {"record": record})
            try:
                self.log.append_all(
                    [*events, event], version, [*projection, ("ZREM", self._pending, pending)]
                )
            except VersionConflict:
                if not self._r.exists(self.keys.meme(meme_id)):
                    raise
                # a save retried after its first try was written (its reply lost): done once
                self._r.zrem(self._pending, pending)

    def stage_image(self, meme_id: str, png: bytes) -> str:
        """Put the PNG of a meme still being made in place ahead of its :meth:`save` (its
        picture is drawn while its caption is judged, so its files need not be written after
        the judging): returns what the save and :meth:`unstage` take. Files whose meme is
        never saved are removed by :meth:`unstage`, or after a crash by :meth:`tidy_images`."""
        if not valid_id(meme_id):
            raise ValueError(f"invalid meme id {meme_id!r}")
        pending = f"{meme_id}:{image_ref(png)['sha256']}"
        self._put_image(meme_id, png, pending)
        return pending

    def unstage(self, staged: str) -> None:
        """Remove the files :meth:`stage_image` put in place for a meme that was not saved."""
        self._settle(staged)

    def _put_image(self, meme_id: str, png: bytes, pending: str) -> None:
        """The PNG's files, durably, entered in ``images:pending`` first so that a crash
        leaves nothing :meth:`tidy_images` does not find."""
        with self._guard(f"saving meme {meme_id}", write=True):
            self._r.zadd(self._pending, {pending: time.time()})
        with self._on_disk(f"saving the image of meme {meme_id}"):
            self.images.put(meme_id, png, pending.partition(":")[2])

    def keep(
        self,
        meme: dict[str, Any],
        png: bytes,
        cache_key: str | None,
        cache_ttl_s: int,
        not_after: float | None = None,
        version: int = 0,
        correlation: str = "",
        events: Sequence[Event] = (),
        staged: str = "",
    ) -> str:
        """Save a meme just made (after the ``version`` events its journal appended), and cache
        it under ``cache_key`` unless that is None (a fresh meme); returns its id. Past
        ``not_after`` (the request's wall-clock deadline) nothing is saved (:class:`TooLate`):
        the thread that saves may start late, and the client has had its 504 by then.
        ``staged``: as :meth:`save` takes it."""
        self.save(meme, png, not_after, version, correlation, events, staged)
        meme_id: str = meme["id"]
        if cache_key:
            trace = str(meme.get("trace_id") or "")
            self.cache_put(cache_key, meme_id, cache_ttl_s, correlation or trace, trace)
        return meme_id

    def get(self, meme_id: str) -> dict[str, Any] | None:
        """The meme's record, or None if it does not exist (or the id is not a valid id)."""
        if not valid_id(meme_id):
            return None
        with self._guard(f"reading meme {meme_id}"):
            raw = self._read("meme", meme_id, self.keys.meme(meme_id))
            return None if raw is None else self._meme(meme_id, raw)

    def image(self, meme_id: str, known: Collection[str] = ()) -> MemeImage | None:
        """The meme's PNG and its SHA-256, or None if there is no such meme (or the id is not
        a valid id). ``known``: digests the asker holds (``"*"``: any); if the PNG's is one of
        them, its bytes are not read (``png`` None). A PNG file that is missing, or not what
        the record says (then quarantined), raises :class:`ImageLost`."""
        meme = self.get(meme_id)
        if meme is None:
            return None
        if "image" not in meme:
            return self._legacy_image(meme_id, known)
        digest: str = meme["image"]["sha256"]
        if digest in known or "*" in known:
            return MemeImage(digest)
        try:
            png = self.images.read(meme_id)
        except FileNotFoundError:
            path = self.images.meme_path(meme_id)
            log.warning("the image of meme %s is missing: no file %s", meme_id, path)
            raise ImageLost(f"the image of meme {meme_id} is missing") from None
        except OSError as exc:
            raise StoreError(f"the image directory failed reading meme {meme_id}: {exc}") from exc
        problem = png_problem(png)
        if problem is None and image_ref(png) != meme["image"]:
            problem = "its SHA-256 or size is not the one its record names"
        if problem is not None:
            self._set_image_aside(meme_id, digest, problem)
            raise ImageLost(f"the image of meme {meme_id} was corrupt and is quarantined")
        return MemeImage(digest, png)

    def _set_image_aside(self, meme_id: str, digest: str, reason: str) -> None:
        """Quarantine the meme's PNG file: moved, entered, counted and logged once."""
        with self._on_disk(f"quarantining the image of meme {meme_id}"):
            moved_to = self.images.quarantine(meme_id, digest)
        if moved_to is not None:  # else another reader moved it first
            with self._guard(f"quarantining the image of meme {meme_id}"):
                self.quarantine.moved(
                    "png", meme_id, str(self.images.meme_path(meme_id)), str(moved_to), reason
                )

    def _legacy_image(self, meme_id: str, known: Collection[str]) -> MemeImage | None:
        """The PNG of a meme saved before PNGs were files: the key ``{p}:png:{id}``; None if
        it is not a whole PNG (quarantined) or gone."""
        png = self._legacy_png(meme_id)
        if png is None:
            return None
        digest = hashlib.sha256(png).hexdigest()
        return MemeImage(digest, None if digest in known or "*" in known else png)

    def _legacy_png(self, meme_id: str) -> bytes | None:
        with self._guard(f"reading the png of meme {meme_id}"):
            key = self.keys.png(meme_id)
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
                    self._r.zrevrange(self.keys.index, 0, limit, withscores=True),
                )
            else:
                score, last_id = _decode_cursor(cursor)
                pipe = self._r.pipeline(transaction=False)
                pipe.zrangebyscore(self.keys.index, score, score)
                pipe.zrevrangebyscore(
                    self.keys.index, f"({score!r}", "-inf", start=0, num=limit + 1, withscores=True
                )
                same_score, older = pipe.execute()
                after = sorted((m for m in same_score if m.decode() < last_id), reverse=True)
                entries = [(m, score) for m in after] + older
            page = [(m.decode(errors="replace"), s) for m, s in entries[:limit]]
            raws = cast(
                list[bytes | None],
                self._r.mget([self.keys.meme(i) for i, _ in page]) if page else [],
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
        return memes, page_cursor(page[-1][1], page[-1][0]) if more else None

    def delete(self, meme_id: str, why: str = ERASED) -> bool:
        """Erase the meme everywhere, incl. cache entries pointing to it, quarantined copies
        of its record or PNG, and its PNG file (and the file's content, unless another meme
        has the same picture), as an ``erased`` event (``why``: EXPIRED for retention); True
        if any of it existed. Then settles what earlier saves and erasures left unfinished
        (:meth:`tidy_images`). An erasure that deleted something is counted
        (:class:`~memesys.storage.erasures.Erasures`) in the same transaction: the server's
        files owe a rewrite that drops it (:mod:`memesys.storage.rewrites`)."""
        if not valid_id(meme_id):
            return False
        cachedby = self.keys.cachedby(meme_id)
        meme_key = self.keys.meme(meme_id)
        pending = f"{meme_id}:"

        def erase(pipe: Pipeline) -> None:
            nonlocal pending
            # Only cache keys that still point to this meme are dropped; WATCH on them makes a
            # concurrent re-point or cache_put restart the transaction instead of being lost.
            cache_keys = list(pipe.smembers(cachedby))
            if cache_keys:
                pipe.watch(*cache_keys)  # type: ignore[no-untyped-call]  # untyped in redis-py
            targets = pipe.mget(cache_keys) if cache_keys else []
            pointing = [k for k, t in zip(cache_keys, targets) if t == meme_id.encode()]
            # its key exists from its first event until it is erased: an erasure of a meme
            # already erased (a retried DELETE, two retention sweeps) adds nothing to the log
            unerased = pipe.exists(self.sealer.key_name(entity))
            pending = f"{meme_id}:{_digest_of(cast(bytes | None, pipe.get(meme_key)))}"
            quarantined = (
                self.quarantine.key_of("meme", meme_id),
                self.quarantine.key_of("png", meme_id),
            )
            present = pipe.exists(
                self.keys.meme(meme_id),
                self.keys.png(meme_id),
                *quarantined,
                self.sealer.key_name(entity),
            )
            pipe.multi()
            pipe.delete(meme_key)
            pipe.delete(self.keys.png(meme_id))
            pipe.delete(cachedby, *pointing)
            pipe.zrem(self.keys.index, meme_id)
            pipe.delete(*quarantined)
            pipe.zadd(self._pending, {pending: 0})  # its files go next, even after a crash
            if present:  # the disk owes a rewrite (memesys.storage.erasures)
                self.erasures.count_in(pipe)
            if unerased:  # nor does an id the log never saw (a client's guess)
                digests = [cast(bytes, k).decode().rsplit(":", 1)[1] for k in pointing]
                event = Event(why, entity, {"id": meme_id, "caches": digests}, "", why, "")
                # the same deletes again, as the event's projection: what a rebuild runs
                self.log.append_in(pipe, event, writes=writes(self.keys, event, dict))
                pipe.delete(self.sealer.key_name(entity))  # crypto-shredding: the key goes

        entity = meme_entity(meme_id)
        with self._guard(f"deleting meme {meme_id}", write=True):
            watched = (cachedby, meme_key, self.sealer.key_name(entity))
            replies = cast(list[int], self._r.transaction(erase, *watched))
        record, png, _, indexed, copies = replies[:5]
        files = self._settle(pending)
        try:
            self.tidy_images()
        except StoreError as exc:  # this erasure is done; the others wait for the next one
            log.warning("image files left to tidy later: %s", exc)
        return bool(record or png or indexed or copies or files)

    def _settle(self, pending: str) -> bool:
        """Finish the entry ``pending`` (``{id}:{digest}``) of ``images:pending``: its files
        are removed unless its meme was saved; True if the meme had files."""
        meme_id, _, digest = pending.partition(":")
        with self._guard(f"tidying the image of meme {meme_id}"):
            saved = bool(self._r.exists(self.keys.meme(meme_id)))
        files = False
        if not saved:
            with self._on_disk(f"erasing the image of meme {meme_id}"):
                files = self.images.erase(meme_id, digest or None)
        with self._guard(f"tidying the image of meme {meme_id}"):
            self._r.zrem(self._pending, pending)
        return files

    def tidy_images(self, grace_s: float = PENDING_GRACE_S) -> int:
        """Settle what a crash left unfinished: erasures (at once) and saves begun over
        ``grace_s`` ago whose meme was never stored (their files are removed); at most
        ``TIDY_BATCH`` entries a call. Returns how many it settled."""
        with self._guard("reading the pending image files"):
            due = cast(
                list[bytes],
                self._r.zrangebyscore(
                    self._pending, "-inf", time.time() - grace_s, start=0, num=TIDY_BATCH
                ),
            )
        for member in due:
            self._settle(member.decode(errors="replace"))
        return len(due)

    def move_legacy_pngs(self, limit: int = 100) -> int:
        """Move up to ``limit`` PNGs of memes saved before PNGs were files out of Redis: each
        becomes a file and its record gets its ``image``, in one MULTI/EXEC that also deletes
        the key (a corrupt PNG is quarantined instead; a PNG without its record deleted).
        Returns how many keys it handled; 0 once none is left, which it remembers
        (``{p}:images:legacy_moved``) so that later calls scan nothing. Safe to run anywhere
        at once."""
        with self._guard("finding PNGs kept in Redis"):
            if self._r.exists(self._legacy_moved):
                return 0
            found = self._r.scan_iter(match=self.keys.png("*"), count=LEGACY_SCAN_COUNT)
            keys = list(islice(found, limit))
            if not keys:
                self._r.set(self._legacy_moved, time.time())
        for key in keys:
            self._move_legacy(cast(bytes, key).decode(errors="replace").rsplit(":", 1)[1])
        return len(keys)

    def _move_legacy(self, meme_id: str) -> None:
        meme_key, png_key = self.keys.meme(meme_id), self.keys.png(meme_id)
        written: set[str] = set()  # pending entries of files written (once per attempt)

        def move(pipe: Pipeline) -> None:
            raw = cast(bytes | None, pipe.get(meme_key))
            png = self._legacy_png(meme_id)  # a corrupt one is quarantined: the WATCH retries
            meme = None if raw is None else self._meme(meme_id, raw)
            if png is None:
                return
            record, pending = None, ""
            if meme is not None and "image" not in meme:
                image = image_ref(png)
                pending = f"{meme_id}:{image['sha256']}"
                written.add(pending)
                pipe.zadd(self._pending, {pending: time.time()})
                with self._on_disk(f"moving the image of meme {meme_id} out of Redis"):
                    self.images.put(meme_id, png, image["sha256"])
                record = json.dumps(
                    {**meme, "image": image}, separators=(",", ":"), ensure_ascii=False
                ).encode()
            pipe.multi()
            if record is not None:
                pipe.set(meme_key, record)
                pipe.zrem(self._pending, pending)
            pipe.delete(png_key)  # moved, or its record is gone (erased, quarantined)

        with self._guard(f"moving the image of meme {meme_id} out of Redis"):
            self._r.transaction(move, meme_key, png_key)
        for pending in written:  # files of an attempt whose record changed meanwhile go
            self._settle(pending)

    def older_than(self, cutoff: float, limit: int) -> tuple[str, ...]:
        """The ids of up to ``limit`` memes made before ``cutoff`` (Unix seconds), oldest
        first: what retention expires next."""
        with self._guard("listing memes past retention"):
            ids = cast(
                Sequence[bytes],
                self._r.zrangebyscore(self.keys.index, "-inf", f"({cutoff!r}", 0, limit),
            )
        return tuple(i.decode(errors="replace") for i in ids)

    def cache_put(
        self, key: str, meme_id: str, ttl_s: int, correlation: str = "", trace: str = ""
    ) -> None:
        """Remember meme_id for key for ttl_s seconds (a ``cached`` event of the meme, carrying
        ``correlation`` and ``trace``); a no-op if the meme no longer exists.

        Keeps {p}:cachedby:{id} in step (and expiring no earlier than its entries) so delete
        can find every cache entry; a key re-pointed to another meme leaves the old set.
        """
        if not valid_id(meme_id):
            raise ValueError(f"invalid meme id {meme_id!r}")
        if not isinstance(ttl_s, int) or ttl_s < 1:
            raise ValueError("ttl_s must be a whole number of seconds, at least 1")
        cache_key = self._cache_key(key)
        digest = cache_key.rsplit(":", 1)[1]
        cachedby = self.keys.cachedby(meme_id)
        meme_key = self.keys.meme(meme_id)

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
                pipe.srem(self.keys.cachedby(old_id), cache_key)
            data = {"meme": meme_id, "cache": digest, "expires_at": time.time() + ttl_s}
            event = Event(CACHED, meme_entity(meme_id), data, correlation, "cache", trace)
            self.log.append_in(pipe, event)

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
            if exists and not self._r.exists(self.keys.meme(meme_id)):
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

    def projections_behind(self) -> bool:
        """The projections do not hold the event log: their checkpoint is missing (lost with
        them; :mod:`memesys.storage.projector` replays the log and sets it again)."""
        with self._guard("reading the projections' checkpoint"):
            return projections_behind(self._r, self.keys.prefix)
