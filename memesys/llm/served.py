"""Which model answered: the transport records the model that served each call (the primary or
a fallback), and whoever runs a stage reads it back, so the meme records the model that
actually answered each stage."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

_served: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "memesys_llm_served", default=None
)


@contextmanager
def tracking() -> Iterator[list[str]]:
    """Collect, in order, the models that answer the calls made in the block."""
    models: list[str] = []
    token = _served.set(models)
    try:
        yield models
    finally:
        _served.reset(token)


def record(model: str) -> None:
    """The transport: ``model`` answered a call."""
    models = _served.get()
    if models is not None:
        models.append(model)


def model_of(models: list[str], default: str) -> str:
    """The model that answered the stage (its last call), else ``default``."""
    return models[-1] if models else default
