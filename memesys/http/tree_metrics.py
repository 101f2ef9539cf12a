"""The supervision tree's series and troubles, from one status answer of the root supervisor.

The supervisors run in other processes than the gateway; each keeps its children's counts
(restarts, escalations, health-check kills) and a pool knows the requests waiting for a
worker. At each /metrics the gateway asks the root for the whole tree
(:class:`~actors.messages.StatusQuery`, bounded: a node that does not answer in time is
reported ``unresponsive``, and a root that does not answer leaves ``memesys_tree_status_read``
at 0 and no tree series), and this module turns the answer into Prometheus families, with the
figures workers report of their own (the event log's lag: :mod:`memesys.domain.gauges`).
Every node is named by its path from the root (``memesys/generator``): ``supervisor`` is the
supervisor's path, ``child`` the child's name under it, ``pool`` a pool's path.

A count lives in its supervisor's process: a supervisor that restarts starts its children's
counts again at 0 (a counter reset, which Prometheus's ``rate``/``increase`` handle); its own
restart is counted by its parent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.messages import ChildStatus, TreeStatus
from memesys.domain.gauges import HELP as WORKER_GAUGES

RUNNING = "running"
# A child in one of these states is where it should be (``stopped``: a transient child that
# finished, or one not started yet), whatever its last exit was.
SETTLED = (RUNNING, "stopped")

# name: (help, the ChildStatus field counted)
CHILD_COUNTERS = {
    "memesys_actor_restarts_total": (
        "restarts of a child by its supervisor (crashes, health-check kills, group restarts)",
        "restarts",
    ),
    "memesys_actor_escalations_total": (
        "times a child supervisor gave up (restart intensity reached) and exited",
        "escalations",
    ),
    "memesys_actor_health_kills_total": (
        "times a child was killed by its supervisor's health check (silent past the timeout)",
        "health_kills",
    ),
}
CHILD_UP = ("memesys_actor_up", "1 while the child runs and answered the status query, else 0")
POOL_IN_FLIGHT = (
    "memesys_pool_in_flight",
    "requests a pool's workers report working on (an async worker's calls; a synchronous "
    "worker answers between requests: 0)",
)
POOL_QUEUED = (
    "memesys_pool_queued",
    "requests a pool holds while none of its workers can take them",
)
STATUS_READ = (
    "memesys_tree_status_read",
    "1 if the root supervisor answered this scrape's status query in time, else 0",
)


@dataclass(frozen=True)
class Node:
    """One child of the tree with its supervisor's path."""

    supervisor: str
    status: ChildStatus

    @property
    def path(self) -> str:
        return f"{self.supervisor}/{self.status.name}"


def nodes(tree: TreeStatus) -> Iterator[Node]:
    """Every child of the tree, parents before their children."""

    def walk(supervisor: str, children: tuple[ChildStatus, ...]) -> Iterator[Node]:
        for child in children:
            node = Node(supervisor, child)
            yield node
            yield from walk(node.path, child.children)

    yield from walk(tree.name, tree.children)


def troubles(tree: TreeStatus) -> list[dict[str, str]]:
    """The sub-trees that do not run, topmost only (what is under one is down with it): path,
    state (``restarting``, ``dead``, ``starting``, ``unresponsive``...) and why it last exited."""
    found: list[dict[str, str]] = []
    for node in nodes(tree):
        if node.status.state in SETTLED or any(
            node.path.startswith(t["path"] + "/") for t in found
        ):
            continue
        found.append(
            {"path": node.path, "state": node.status.state, "reason": node.status.last_exit}
        )
    return found


class TreeSeries(Collector):
    """The families of one tree status (``tree`` None: the root did not answer in time)."""

    def __init__(self) -> None:
        self.tree: TreeStatus | None = None

    def collect(self) -> Iterator[Metric]:
        tree = self.tree
        yield GaugeMetricFamily(*STATUS_READ, value=0 if tree is None else 1)
        labels = ["supervisor", "child"]
        counters = {
            name: CounterMetricFamily(name, help_text, labels=labels)
            for name, (help_text, _) in CHILD_COUNTERS.items()
        }
        up = GaugeMetricFamily(*CHILD_UP, labels=labels)
        in_flight = GaugeMetricFamily(*POOL_IN_FLIGHT, labels=["pool"])
        queued = GaugeMetricFamily(*POOL_QUEUED, labels=["pool"])
        for node in nodes(tree) if tree is not None else ():
            child = node.status
            names = [node.supervisor, child.name]
            for name, (_, field) in CHILD_COUNTERS.items():
                counters[name].add_metric(names, getattr(child, field))
            up.add_metric(names, 1 if child.state == RUNNING else 0)
            if child.kind == "pool" and child.queued is not None:
                queued.add_metric([node.path], child.queued)
                if child.in_flight is not None:
                    in_flight.add_metric([node.path], child.in_flight - child.queued)
        yield from counters.values()
        yield from (up, in_flight, queued)
        yield from self._worker_gauges(tree)

    def _worker_gauges(self, tree: TreeStatus | None) -> Iterator[Metric]:
        """The figures workers report with their status (:mod:`memesys.domain.gauges`), one
        series per worker; a family is there even when no worker reports it."""
        families = {
            name: GaugeMetricFamily(name, help_text, labels=["supervisor", "child"])
            for name, help_text in WORKER_GAUGES.items()
        }
        for node in nodes(tree) if tree is not None else ():
            for name, value in node.status.gauges:
                if name in families:
                    families[name].add_metric([node.supervisor, node.status.name], value)
        yield from families.values()
