"""memesys: the meme domain and the daemon's faces (gateway, admin, telemetry).

Built on the generic supervision runtime in :mod:`actors`, which never imports this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memesys.pipeline.program import MemeProgram

__all__ = ["MemeProgram"]


def __getattr__(name: str) -> Any:
    """``memesys.MemeProgram`` on first use: ``import memesys`` (the admin script, the config)
    never imports dspy."""
    if name == "MemeProgram":
        from memesys.pipeline.program import MemeProgram

        return MemeProgram
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
