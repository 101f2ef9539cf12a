"""What a 201 or 202 promises on a Redis the daemon does not own (``REDIS_URL``).

The embedded server is configured by the daemon (``storage.durability``, :data:`memesys.storage.
connection.APPENDFSYNC`). A configured server is not: Redis 6.2 has no WAITAOF, so a client
cannot wait for its write to be fsynced, and changing the server's configuration is its
operator's call. At start the daemon reads ``appendonly`` and ``appendfsync`` and says in the
log what an answered write means there: a WARNING when that is less than ``storage.durability``
asks, so the weaker guarantee is never silent.
"""

from __future__ import annotations

import logging

import redis

from memesys.storage.connection import connect

log = logging.getLogger("memesys.storage.durability")

CHECK_TIMEOUT_S = 1.0

MEANING = {
    "fsync": "the write is on its disk (fsynced before the answer)",
    "memory": (
        "the write is in its memory and AOF file, fsynced later (about once a second with "
        "everysec): a power cut or a kernel crash can lose the memes answered last"
    ),
    "snapshot": (
        "the write is in its memory, on disk only at its next RDB snapshot: "
        "a crash of that server loses every meme answered since"
    ),
}


def promise(settings: dict[str, str]) -> str:
    """What an acknowledged write means on a server with these ``CONFIG GET`` settings: "fsync"
    (on disk before the answer), "memory" (in its AOF file, fsynced later) or "snapshot" (in
    memory only, on disk at the next RDB snapshot)."""
    if settings.get("appendonly") != "yes":
        return "snapshot"
    return "fsync" if settings.get("appendfsync") == "always" else "memory"


def report(url: str, durability: str) -> str:
    """Log what a 201 means on the Redis at ``url`` (WARNING when it is less than
    ``durability`` asks) and return that promise ("unknown": the settings cannot be read)."""
    client = connect(url, timeout_s=CHECK_TIMEOUT_S, retries=0)
    try:
        settings = {str(k): str(v) for k, v in client.config_get("append*").items()}
    except redis.RedisError as exc:
        log.warning(
            "storage.durability = %s, but the persistence settings of the Redis at REDIS_URL "
            "cannot be read (%s): a 201 means that server has the write; whether it is on its "
            "disk is that server's configuration (appendonly yes, appendfsync always)",
            durability,
            str(exc).splitlines()[0][:100],
        )
        return "unknown"
    finally:
        client.close()
    found = promise(settings)
    where = (
        f"appendonly {settings.get('appendonly', '?')}, "
        f"appendfsync {settings.get('appendfsync', '?')}"
    )
    if found == "fsync" or found == durability:
        log.info("the Redis at REDIS_URL has %s: a 201 means %s", where, MEANING[found])
    else:
        log.warning(
            "storage.durability = %s, but the Redis at REDIS_URL has %s: a 201 means only %s "
            "(set appendonly yes and appendfsync always on that server for on-disk answers)",
            durability,
            where,
            MEANING[found],
        )
    return found
