"""Child specifications and supervisor flags, with Erlang/OTP ``supervisor`` semantics.

- ``permanent`` children are always restarted, ``transient`` only after an abnormal exit
  (anything but a :class:`~actors.messages.StopMe` the supervisor granted), ``temporary`` never.
- ``one_for_one`` restarts the failed child; ``one_for_all`` stops the others (reverse start
  order) and restarts all in start order; ``rest_for_one`` does that for the failed child and
  the children started after it.
- Restart intensity: more than ``max_restarts`` restarts within ``period_s`` seconds and the
  supervisor stops its children in reverse order and exits, so its own supervisor decides.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Any


class Restart(str, enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(str, enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


def class_path(actor: type | str) -> str:
    """``module.Class`` for an actor class; Thespian accepts this form in ``createActor``."""
    if isinstance(actor, str):
        return actor
    return f"{actor.__module__}.{actor.__qualname__}"


DEFAULT_SHUTDOWN_S = 5.0
SUPERVISOR_STOP_MARGIN_S = 1.0  # per supervisor level: messages, kills, exits between stops


@dataclass(frozen=True)
class ChildSpec:
    """How a supervisor starts, restarts and stops one child.

    ``args`` reaches the child in :class:`~actors.messages.Init`; it must pickle.
    ``shutdown_s`` is how long an ordered stop waits before the child's process tree is killed
    (default :data:`DEFAULT_SHUTDOWN_S`); for a supervisor or pool child it is only a floor:
    its budget is derived from its children (:func:`shutdown_budget`).
    ``backoff``, if given, replaces the supervisor's :class:`Backoff` for this child's restarts.
    """

    name: str
    actor: str | type  # an actor class or its ``module.Class`` path; kept as the path
    args: Any = None
    restart: Restart = Restart.PERMANENT
    shutdown_s: float | None = None
    backoff: Backoff | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"child name {self.name!r} must be non-empty and contain no '/'")
        object.__setattr__(self, "actor", class_path(self.actor))
        object.__setattr__(self, "restart", Restart(self.restart))


@dataclass(frozen=True)
class Backoff:
    """Delay before a restart: ``initial_s * 2**n`` capped at ``max_s``, ± ``jitter`` fraction.

    ``n`` counts the earlier restarts of that child inside the intensity period, so a child
    that crashes in a loop backs off further each time while one that crashes rarely waits
    ``initial_s``. The supervisor waits on a timer: its other children keep being started,
    stopped and restarted meanwhile.
    """

    initial_s: float = 0.0
    max_s: float = 1.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        if self.initial_s <= 0:
            return 0.0
        base = min(self.max_s, self.initial_s * (2.0 ** max(0, attempt)))
        return max(0.0, base * (1 + self.jitter * (2 * rng.random() - 1)))


DEFAULT_HEALTH_INTERVAL_S = 1.0
DEFAULT_HEALTH_TIMEOUT_S = 3.0


def check_health(interval_s: float, timeout_s: float) -> None:
    if interval_s < 0 or timeout_s <= 0:
        raise ValueError("health_interval_s must be >= 0 and health_timeout_s > 0")


@dataclass(frozen=True)
class SupervisorArgs:
    """The ``args`` of a supervisor child (or of the root).

    Health checks: every ``health_interval_s`` the supervisor pings each running child; a
    child that has answered nothing for ``health_timeout_s`` is killed (its process tree,
    SIGKILL) and restarted like a crashed one. Pings go at least twice per timeout, whatever
    the interval. ``health_interval_s = 0`` turns health checks off.
    """

    children: tuple[ChildSpec, ...] = ()
    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    period_s: float = 5.0
    backoff: Backoff = field(default_factory=Backoff)
    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S
    health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", Strategy(self.strategy))
        object.__setattr__(self, "children", tuple(self.children))
        names = [c.name for c in self.children]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate child names in {names}")
        if self.max_restarts < 0 or self.period_s <= 0:
            raise ValueError("max_restarts must be >= 0 and period_s > 0")
        check_health(self.health_interval_s, self.health_timeout_s)


def shutdown_budget(spec: ChildSpec) -> float:
    """How long an ordered stop of ``spec``'s child may take before it is killed.

    A worker: its ``shutdown_s``. A supervisor stops its children one at a time, each within
    its own budget, so its budget is the sum of its children's budgets plus
    :data:`SUPERVISOR_STOP_MARGIN_S` (recursively); a pool's is ``size`` times
    ``worker_shutdown_s`` plus the margin. An explicit ``shutdown_s`` on a supervisor or pool
    can lengthen that, never shorten it. This is the budget derived from the specs; a
    supervisor whose children changed at run time (``Resize``, ``AddChild``) reports its
    current budget when it is asked to stop (:class:`~actors.messages.Stopping`).
    """
    args = spec.args
    if isinstance(args, PoolArgs):
        derived = args.size * args.worker_shutdown_s + SUPERVISOR_STOP_MARGIN_S
    elif isinstance(args, SupervisorArgs):
        derived = sum(shutdown_budget(c) for c in args.children) + SUPERVISOR_STOP_MARGIN_S
    else:
        return DEFAULT_SHUTDOWN_S if spec.shutdown_s is None else spec.shutdown_s
    return derived if spec.shutdown_s is None else max(spec.shutdown_s, derived)


MAX_ATTEMPTS = 3  # a pool's idempotent request survives two worker deaths, whoever dispatches


@dataclass(frozen=True)
class PoolArgs:
    """The ``args`` of a :class:`~actors.pool.Pool`: ``size`` workers of one class.

    Each worker gets ``worker_args`` in its Init. ``max_outstanding`` bounds the requests a
    worker holds at once; past it on every worker the pool refuses with ``overloaded``.
    ``wait_s`` is how long a request may wait for a worker while all of them restart.
    ``health_interval_s``/``health_timeout_s``: the workers' health checks, as in
    :class:`SupervisorArgs`. ``overdue_s``: a worker whose oldest request is older than this
    gets no new request while another worker can take it (:mod:`actors.dispatch`); None: the
    health timeout.
    """

    worker: str | type  # the workers' actor class or its path; kept as the path
    size: int
    worker_args: Any = None
    max_outstanding: int = 64
    max_restarts: int = 10
    period_s: float = 5.0
    backoff: Backoff = field(default_factory=Backoff)
    worker_shutdown_s: float = 5.0
    wait_s: float = 2.0
    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S
    health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S
    overdue_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "worker", class_path(self.worker))
        if self.size < 0 or self.max_outstanding < 1:
            raise ValueError("size must be >= 0 and max_outstanding >= 1")
        check_health(self.health_interval_s, self.health_timeout_s)
        if self.overdue_s is not None and self.overdue_s <= 0:
            raise ValueError("overdue_s must be > 0 (or None: the health timeout)")

    @property
    def overdue_bound_s(self) -> float:
        return self.health_timeout_s if self.overdue_s is None else self.overdue_s
