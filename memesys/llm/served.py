"""What the transport tells the stage it serves: whoever runs a stage opens :func:`tracking`
with the stage's key; the transport reads the stage (its hedging keys latencies by it) and
records the model that answered each call (the primary or a fallback) and each hedge it sent,
so the meme records who actually answered every stage and how many hedges it took."""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_ROUND = re.compile(r"_\d+$")


@dataclass
class Served:
    """One stage's calls as the transport saw them: ``stage`` without its round suffix
    ("factuality_2" -> "factuality"), the models that answered, in order, and the hedges sent."""

    stage: str = ""
    models: list[str] = field(default_factory=list)
    hedges: int = 0

    def model(self, default: str) -> str:
        """The model that answered the stage (its last call), else ``default``."""
        return self.models[-1] if self.models else default


_served: contextvars.ContextVar[Served | None] = contextvars.ContextVar(
    "memesys_llm_served", default=None
)


@contextmanager
def tracking(stage_key: str = "") -> Iterator[Served]:
    """Collect what the calls made in the block (stage ``stage_key``) were answered by."""
    served = Served(_ROUND.sub("", stage_key))
    token = _served.set(served)
    try:
        yield served
    finally:
        _served.reset(token)


def stage() -> str:
    """The stage being served ("" outside one)."""
    served = _served.get()
    return served.stage if served is not None else ""


def record(model: str) -> None:
    """The transport: ``model`` answered a call."""
    served = _served.get()
    if served is not None:
        served.models.append(model)


def hedged() -> None:
    """The transport: it sent a hedge for a call."""
    served = _served.get()
    if served is not None:
        served.hedges += 1
