"""The count of erasures the disk still owes: how many were made, how many a rewrite of the
server's files has covered.

One hash, ``{p}:erasures``: ``made`` (incremented in the same transaction as an erasure's
deletes) and ``covered`` (the ``made`` a rewrite read before its fork started, once that
rewrite is done). Both live in one key, so a loss of the key loses both and new erasures are
owed again, never hidden behind an old ``covered``. Nothing personal is kept: numbers only.
"""

from __future__ import annotations

from typing import cast

import redis
from redis.client import Pipeline
from redis.commands.core import Script

MADE, COVERED = "made", "covered"

# covered rises to the target only: an older rewrite finishing late, or a key lost (made
# below the target) since the target was read, never lowers or overstates it.
_COVER = """
local made = tonumber(redis.call('HGET', KEYS[1], 'made') or '0')
local covered = tonumber(redis.call('HGET', KEYS[1], 'covered') or '0')
local target = tonumber(ARGV[1])
if target <= made and target > covered then
  redis.call('HSET', KEYS[1], 'covered', target)
  covered = target
end
return made - covered
"""


class Erasures:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.key = f"{prefix}:erasures"
        self._r = client
        self._cover = Script(client, _COVER)

    def count_in(self, pipe: Pipeline) -> None:
        """Queue one more erasure on ``pipe`` (inside the erasure's MULTI)."""
        pipe.hincrby(self.key, MADE, 1)

    def state(self) -> tuple[int, int]:
        """(made, covered)."""
        made, covered = cast(list[bytes | None], self._r.hmget(self.key, [MADE, COVERED]))
        return int(made or 0), int(covered or 0)

    def cover(self, made: int) -> int:
        """Record that the erasures up to ``made`` have reached the disk; returns how many are
        still owed."""
        return int(cast(int, self._cover([self.key], [made])))
