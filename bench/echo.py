"""The benchmark's echo pool: the runtime's dispatch path with no domain work at its end.

Table 1 measures what the actor path adds to an HTTP request (gateway -> bridge -> pool's
directory -> worker -> reply). It needs a worker that answers at once, so it adds to the
daemon's own tree a pool shaped like the generator pool (same size and in-flight bound,
same worker base class) whose workers echo; no production actor carries benchmark-only code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from actors.async_actor import AsyncActor
from actors.spec import ChildSpec, PoolArgs
from memesys.config import Config

ECHO = "echo"


@dataclass(frozen=True)
class Echo:
    """Answered with ``value``."""

    value: Any = None


class EchoWorker(AsyncActor):
    def on_start(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight

    def handle(self, payload: Any) -> Any:
        if isinstance(payload, Echo):
            return payload.value
        return super().handle(payload)


def with_echo_pool(root: ChildSpec, cfg: Config) -> ChildSpec:
    """``root`` with an echo pool as its last child, sized like the generator pool."""
    workers = cfg.workers
    pool = ChildSpec(
        ECHO,
        "actors.pool.Pool",
        PoolArgs(
            f"{__name__}.EchoWorker",
            workers.generators,
            workers.max_in_flight_per_worker,
            max_outstanding=workers.max_in_flight_per_worker,
        ),
    )
    return dataclasses.replace(
        root, args=dataclasses.replace(root.args, children=root.args.children + (pool,))
    )
