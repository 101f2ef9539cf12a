"""The engines that make synchronous memes, and which one makes each.

The actor tree (:class:`TreeEngine`: the gateway asks the generator pool) is the main one;
the in-process engine (``memesys.inprocess``, built by the daemon) makes memes in the
gateway's own process. :class:`Split` sends a configured share of the memes to the second
one: exactly, not at random, so any run of n memes sends round(n × share) of them there
(give or take one), which is what an A/B of the two paths needs to compare like with like.
"""

from __future__ import annotations

from typing import Any, Protocol

from actors.bridge import Directory
from memesys.domain.engines import ACTORS
from memesys.domain.messages import GenerateMeme
from memesys.tree.paths import GENERATOR


class Engine(Protocol):
    """Makes one meme within ``timeout_s`` or raises its failure (with a contract code)."""

    name: str

    async def generate(self, order: GenerateMeme, timeout_s: float) -> dict[str, Any]: ...


class TreeEngine:
    """The actor tree: the generator pool makes the meme. Idempotent: if a worker dies holding
    it, the pool retries it on another worker; at worst a meme saved just before the death is
    stored twice."""

    name = ACTORS

    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    async def generate(self, order: GenerateMeme, timeout_s: float) -> dict[str, Any]:
        meme: dict[str, Any] = await self.directory.ask(
            GENERATOR, order, timeout_s, idempotent=True
        )
        return meme


class Split:
    """``main`` makes the memes, except ``share`` of them that ``other`` makes."""

    def __init__(self, main: Engine, other: Engine | None = None, share: float = 0.0) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be within 0..1, not {share}")
        if share > 0 and other is None:
            raise ValueError("a share for another engine needs that engine")
        self.main, self.other, self.share = main, other, share
        self.credit = 0.0

    def choose(self) -> Engine:
        self.credit += self.share
        if self.credit >= 1.0 - 1e-9 and self.other is not None:
            self.credit -= 1.0
            return self.other
        return self.main
