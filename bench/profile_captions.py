"""Captions of bench length for the profiling modules (``bench.profile_*``): every format of the
catalogue with texts at about 60 % of each slot's limit, the same for every profile so that their
figures compare."""

from __future__ import annotations

from memesys.domain.formats import CATALOGUE, MemeFormat

WORDS = (
    "when the build finally passes but you forgot to commit the actual fix and "
    "everyone already went home for the weekend again"
).split()


def caption(limit: int, salt: int) -> str:
    """About 60 % of ``limit`` characters of :data:`WORDS`, starting at word ``salt``."""
    out: list[str] = []
    i = salt
    while len(" ".join(out)) < limit * 0.6:
        out.append(WORDS[i % len(WORDS)])
        i += 3
    return " ".join(out)[:limit]


def formats(count: int | None = None) -> list[tuple[MemeFormat, list[str]]]:
    """The first ``count`` formats of the catalogue (all when None), each with its captions."""
    chosen = list(CATALOGUE.values())[:count]
    return [
        (f, [caption(s.max_chars, k + j) for j, s in enumerate(f.slots)])
        for k, f in enumerate(chosen)
    ]
