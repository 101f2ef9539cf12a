"""The runtime's messages: frozen dataclasses, importable by module path, pickled by Thespian.

Every request that expects an answer travels in a :class:`Request` envelope carrying a
correlation id; every answer is a :class:`Reply` with the same id. Thespian hands a reply that
arrives after an ``ask`` timed out to the next ``ask`` on that context, so callers must drop
replies whose id they are not waiting for.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any

from thespian.actors import ActorAddress

from actors.spec import ChildSpec


def new_correlation_id() -> str:
    return uuid.uuid4().hex


# --- the request/reply envelope -----------------------------------------------------------


class FailureCode(enum.StrEnum):
    """The runtime's own failure codes: why the runtime, not the application, failed a request.

    Each value is what travels in :attr:`Failure.code` (a plain string on the wire).
    """

    CRASHED = "crashed"
    """The handler raised: the actor exits and its supervisor restarts it. Also the answer
    to a request that reaches the actor between the crash and its exit."""
    WORKER_LOST = "worker_lost"
    """The worker holding the request exited before answering (a pool's or a directory's
    request that was not idempotent, or had used its attempts)."""
    OVERLOADED = "overloaded"
    """A bound on the requests held at once was reached (a pool's workers, an async actor,
    a bridge): retry later."""
    TIMEOUT = "timeout"
    """The request's deadline passed: no answer in time, or it arrived too late to be
    handled, or its work was abandoned when the deadline passed."""
    UNAVAILABLE = "unavailable"
    """The target cannot take it now: no such child, or the child is not running
    (starting, restarting, stopping); no pool worker came back in time; a supervisor gave
    up (restart intensity); the root is not running; a bridge closed or could not send."""
    DEAD_ADDRESS = "dead_address"
    """The message reached no actor: its address is dead (the actor exited; a restarted one
    has a new address). Resolve the path again."""
    BAD_REQUEST = "bad_request"
    """A runtime command with invalid arguments (a child name already taken, a negative
    pool size)."""
    ERROR = "error"
    """An async actor's handler raised: the request fails, the actor keeps running."""
    CANCELLED = "cancelled"
    """Its asker cancelled it (:class:`Cancel`): its work was stopped, not finished."""


@dataclass(frozen=True)
class Failure:
    """Why a request failed. ``code`` is stable and machine-readable, ``message`` is for people.

    ``code``: one of the runtime's :class:`FailureCode` values, or an application's own code
    (:class:`~actors.base.RequestFailed`). A :class:`FailureCode` is kept as its plain string
    value, so a failure pickles, prints and compares as it always has. ``retry_after``:
    seconds the asker should wait before trying again, when the failure knows (None: it
    does not).
    """

    code: str
    message: str
    retry_after: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.code, FailureCode):
            object.__setattr__(self, "code", self.code.value)


@dataclass(frozen=True)
class Request:
    """An application payload that expects a :class:`Reply`.

    ``reply_to`` lets a request be answered to another address than its sender (the gateway
    bridge sends from one context and listens on another; a pool forwards to a worker that
    answers the original requester directly). ``idempotent`` allows a pool to retry it on
    another worker when the first one dies.

    ``deadline``: the wall-clock time (``time.time()``) after which the asker no longer waits
    for the answer (None: it waits as long as it likes). The asker sets it from its timeout;
    whoever forwards the request keeps it; an actor that receives it too late answers
    ``timeout`` without handling it, and an async actor abandons the work when it passes
    (see :mod:`actors.deadlines`).

    ``trace_context``: the sender's W3C trace context (``traceparent``, ``tracestate`` pairs),
    whose span the receiver's handling span is a child of (:mod:`actors.tracecontext`); None
    while tracing is off. Whoever forwards the request keeps it.
    """

    payload: Any
    correlation_id: str = field(default_factory=new_correlation_id)
    reply_to: ActorAddress | None = None
    idempotent: bool = False
    deadline: float | None = None
    trace_context: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class Reply:
    correlation_id: str
    payload: Any = None
    error: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Batch:
    """Several messages for one target, sent as one Thespian message.

    Thespian costs a few hundred microseconds of Python per message on each side, whatever its
    size, so a batch pays that once for all of its messages. The receiver handles them in order,
    each as if it had arrived alone from the batch's sender.
    """

    messages: tuple[Any, ...]


def unpack(message: Any) -> tuple[Any, ...]:
    """The messages one received message carries: a batch's, or the message itself."""
    return message.messages if isinstance(message, Batch) else (message,)


def batches(outgoing: list[tuple[ActorAddress, Any]]) -> list[tuple[ActorAddress, Any]]:
    """Group ``(target, message)`` pairs by target, in order: one message per target, a
    :class:`Batch` where a target has several (addresses are unhashable: compared by ``==``)."""
    groups: list[tuple[ActorAddress, list[Any]]] = []
    for target, message in outgoing:
        group = next((g for t, g in groups if t == target), None)
        if group is None:
            groups.append((target, [message]))
        else:
            group.append(message)
    return [
        (target, group[0] if len(group) == 1 else Batch(tuple(group))) for target, group in groups
    ]


# --- lifecycle between a supervisor and its children --------------------------------------


@dataclass(frozen=True)
class Init:
    """First message to every child: who it is and its arguments (Thespian has no ctor args).

    ``root`` is the root supervisor, so any actor can resolve another by path
    (:class:`WhereIs`); ``None`` makes the receiver the root. ``heartbeat_s`` > 0: while the
    child handles messages it tells its supervisor so (:class:`Heartbeat`) at most this often,
    which its health check counts as an answer (a busy child is working, not hung).
    ``path``: where the child is in the tree, from the root (``"memesys/store/worker-1"``;
    "": its name), on every line it logs (:mod:`actors.process_logs`).
    """

    name: str
    args: Any
    admin_port: int
    root: ActorAddress | None = None
    heartbeat_s: float = 0.0
    path: str = ""


@dataclass(frozen=True)
class Heartbeat:
    """A child tells its supervisor that it is handling messages (see :class:`Init`)."""

    name: str


@dataclass(frozen=True)
class Booting:
    """A child's first word on :class:`Init`, before its ``on_start``: its OS pid. While it
    starts (a supervisor's start waits for its children's), its supervisor can then see its
    process die or kill its tree when the start times out; without it, a process that died
    before answering :class:`Started` went unseen until the start timed out."""

    name: str
    pid: int


@dataclass(frozen=True)
class Started:
    """A child's answer to :class:`Init`: it is up, with this OS pid and kind."""

    name: str
    pid: int
    kind: str = "worker"  # "worker", "supervisor" or "pool"


@dataclass(frozen=True)
class InitFailed:
    """A child's ``on_start`` raised, or (``escalated``) a child supervisor gave up before it
    had started: the supervisor counts it as an abnormal exit."""

    name: str
    reason: str
    escalated: bool = False


@dataclass(frozen=True)
class StopMe:
    """A child asks its supervisor to stop it normally (so ``transient`` does not restart it)."""

    name: str
    reason: str = "normal"


@dataclass(frozen=True)
class Stop:
    """Ordered stop: a supervisor stops its own children in reverse order, then exits."""

    correlation_id: str = field(default_factory=new_correlation_id)


@dataclass(frozen=True)
class Stopping:
    """A supervisor that got :class:`Stop` tells the sender how long its ordered stop may take
    (``budget_s`` from now: the sum of its children's budgets, see
    :func:`actors.spec.shutdown_budget`), again whenever that grows (a grandchild reported
    more), so that its own supervisor does not kill it mid-stop."""

    name: str
    budget_s: float


@dataclass(frozen=True)
class Stopped:
    correlation_id: str
    name: str


@dataclass(frozen=True)
class Exiting:
    """A supervisor tells its parent why it exits (restart intensity reached)."""

    name: str
    reason: str


@dataclass(frozen=True)
class WorkDone:
    """A pool worker tells its pool that a forwarded request was answered."""

    correlation_id: str


@dataclass(frozen=True)
class Cancel:
    """The asker of request ``correlation_id`` no longer wants its answer: an async actor
    cancels the work (its coroutine, and with it the asks that coroutine awaits, which send
    their own ``Cancel``); a pool passes it to the worker holding the request. Unknown or
    finished work: nothing to do."""

    correlation_id: str


# --- queries and commands, usually sent as Request payloads -------------------------------


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Pong:
    name: str
    pid: int


@dataclass(frozen=True)
class Watch:
    """Asks the supervisors on a :class:`WhereIs`'s way to tell the asker (:class:`Gone`, to
    its ``reply_to``) when the actor found, or a supervisor between the root and it, exits.
    ``token`` names this resolution (a newer one of the same ``path`` by the same asker
    replaces it); the supervisors forget the watch once process ``pid`` has died."""

    pid: int
    token: str
    path: str


@dataclass(frozen=True)
class Gone:
    """What a :class:`Watch` named has exited: its address is dead, and whatever the watcher
    had sent to it (or to its workers, for a pool) will never be answered. Sent once the
    exited process (and its descendants) are gone, so that its last answers arrive first."""

    token: str
    path: str


@dataclass(frozen=True)
class WhereIs:
    """Resolve a slash-separated path of child names, e.g. ``"pipeline/generator"``;
    ``watch``: be told when what was found exits (:class:`Watch`)."""

    path: str
    watch: Watch | None = None


@dataclass(frozen=True)
class Located:
    path: str
    address: ActorAddress
    kind: str = "worker"  # "worker", "supervisor" or "pool" (a pool can be subscribed to)


@dataclass(frozen=True)
class Subscribe:
    """Ask a pool for its workers, answered with :class:`Members` now and pushed again on
    every change, so that the subscriber can send requests to the workers itself. The pool
    forgets the subscriber once its process ``pid`` has died."""

    pid: int


@dataclass(frozen=True)
class Member:
    """A live pool worker; ``accepting`` is False while it stops (it still answers its work)
    and after it exited until its process is gone (its last replies are still on their way).
    ``pid``: None for a worker stopped before it had started (it never took work)."""

    name: str
    address: ActorAddress
    accepting: bool
    pid: int | None


@dataclass(frozen=True)
class Members:
    """A pool's live workers at ``version`` (higher is newer). A request held by a worker
    that is no longer listed, or listed at another address, was lost with it.
    ``overdue_s``: a worker whose oldest request is older than this gets no new request while
    another can take it (:func:`actors.dispatch.pick`); None: no such bound."""

    pool: ActorAddress
    version: int
    workers: tuple[Member, ...]
    max_outstanding: int
    overdue_s: float | None = None


STATUS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class StatusQuery:
    """Ask a supervisor for its sub-tree (answered :class:`TreeStatus`) or a worker for its
    load (answered :class:`WorkerStatus`).

    A supervisor answers within ``timeout_s`` whatever its children do: it asks each running
    child with a smaller budget (:data:`actors.status.STATUS_NESTED_FRACTION` of its own),
    and reports a child that has not answered by its deadline as ``unresponsive``.
    """

    timeout_s: float = STATUS_TIMEOUT_S


@dataclass(frozen=True)
class WorkerStatus:
    """A worker's answer to :class:`StatusQuery`: the requests it holds right now (an async
    actor's coroutines in flight; 0 for a synchronous actor, which answers between requests),
    and ``gauges``, figures of its own as (name, value) pairs (what its application reports:
    :meth:`~actors.base.BaseActor.gauges`)."""

    name: str
    pid: int
    in_flight: int | None
    gauges: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ChildStatus:
    """One node of the supervision tree as its supervisor sees it.

    ``state``: ``starting``, ``running``, ``stopping``, ``restarting`` (waiting out its restart
    backoff), ``dead`` (exited, its restart queued), ``stopped`` (a transient child that exited
    normally), or ``unresponsive`` (running, but it did not answer the status query in time:
    busy in a long handler, SIGSTOPped, hung). ``in_flight``: the requests the worker itself
    reported holding (:class:`WorkerStatus`); for a supervisor or pool, the sum over its
    sub-tree (a pool adds the requests waiting for a worker); ``None`` when unknown (not
    running, or unresponsive). ``queued``: of those, the requests a pool holds while no worker
    can take them (None: not a pool, or unknown).

    The supervisor's own counts for this child, since the supervisor started: ``restarts``;
    ``escalations``, the times this child (a supervisor) gave up and exited (restart intensity
    reached); ``health_kills``, the times its health check killed it (silent past the
    timeout); ``last_exit``, why it last exited abnormally ("" if it never did). ``gauges``: a
    worker's own figures (:class:`WorkerStatus`).
    """

    name: str
    kind: str  # "supervisor", "pool" or "worker"
    state: str
    pid: int | None
    restarts: int
    started_at: float | None
    restart_type: str
    strategy: str | None = None
    in_flight: int | None = None
    children: tuple[ChildStatus, ...] = ()
    queued: int | None = None
    escalations: int = 0
    health_kills: int = 0
    last_exit: str = ""
    gauges: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class TreeStatus:
    """A supervisor's answer to :class:`StatusQuery`: its strategy and its children.

    ``in_flight``: the requests held in the whole sub-tree (see :class:`ChildStatus`);
    ``queued``: a pool's requests waiting for a worker."""

    name: str
    strategy: str
    children: tuple[ChildStatus, ...]
    in_flight: int | None = None
    queued: int | None = None


@dataclass(frozen=True)
class RestartChild:
    """Restart a child by path, as if it had crashed (counts toward restart intensity)."""

    path: str


@dataclass(frozen=True)
class Monitor:
    """Ask a supervisor to answer when it exits (OTP's monitor): the answer is :class:`Down`,
    sent just before the supervisor's process ends. One monitor per asker: a newer one
    replaces the older. A supervisor killed outright answers nothing; pair it with a pid or
    ping check."""


@dataclass(frozen=True)
class Down:
    """A monitored supervisor is exiting. ``requested``: it was asked to stop (an ordered
    shutdown); otherwise it gave up (restart intensity exceeded, children failed to start),
    and ``reason`` says why."""

    name: str
    reason: str
    requested: bool


@dataclass(frozen=True)
class AddChild:
    spec: ChildSpec


@dataclass(frozen=True)
class RemoveChild:
    name: str


@dataclass(frozen=True)
class Resize:
    """Change the number of workers of a pool."""

    size: int


@dataclass(frozen=True)
class Ack:
    detail: str = ""
