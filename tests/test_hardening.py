"""Every socket the actor system listens on is bound to loopback.

Thespian binds all interfaces by default and unpickles whatever arrives; ``start_system``
hardens the bind before the admin is forked, and actors inherit it. This checks every process
of the admin's session (admin, logger, supervisors, workers, the loop thread's contexts of an
async actor) and this test process itself.
"""

from __future__ import annotations

import psutil
import pytest
from thespian.actors import ActorSystem

from actors.messages import WhereIs
from actors.spec import ChildSpec, PoolArgs, SupervisorArgs
from actors.system import session_processes
from tests.support.actor_system import RunningSystem
from tests.support.sample_actors import Journal

pytestmark = pytest.mark.timeout(30)


def bound_sockets(proc: psutil.Process) -> list[tuple[str, int]]:
    """(ip, port) of every listening TCP socket and every bound UDP socket."""
    found = []
    for conn in proc.net_connections("inet"):
        listening = conn.status == psutil.CONN_LISTEN
        udp = conn.type == psutil.socket.SOCK_DGRAM
        if (listening or udp) and conn.laddr:
            found.append((conn.laddr.ip, conn.laddr.port))
    return found


def test_every_listening_socket_is_on_loopback(
    actor_system: RunningSystem, context: ActorSystem, tmp_path
) -> None:
    system = actor_system
    children = (
        ChildSpec("a", "tests.support.sample_actors.Recorder", Journal(str(tmp_path / "journal"))),
        ChildSpec("pool", "actors.pool.Pool", PoolArgs("tests.support.sample_actors.Sleeper", 2)),
        ChildSpec("sleeper", "tests.support.sample_actors.Sleeper"),
    )
    root = system.start(ChildSpec("root", "actors.supervisor.Supervisor", SupervisorArgs(children)))
    sleeper = system.ok(root, WhereIs("sleeper")).address
    sleeper_pid = system.ok(sleeper, 0.0)  # the loop thread and its contexts now exist
    assert system.ok(system.ok(root, WhereIs("pool")).address, 0.0)

    processes = session_processes(system.sid) + [psutil.Process()]
    sockets = {proc.pid: bound_sockets(proc) for proc in processes}
    # admin, logger, root, a, pool, 2 workers, sleeper
    assert len(sockets) - 1 >= 8, sockets
    assert system.port in {port for found in sockets.values() for _, port in found}
    # the sleeper's actor socket, its loop thread's system handle and the bridge's contexts
    assert len({port for _, port in sockets[sleeper_pid]}) >= 3, sockets[sleeper_pid]
    exposed = {pid: [s for s in found if s[0] != "127.0.0.1"] for pid, found in sockets.items()}
    assert not any(exposed.values()), f"sockets not on loopback: {exposed}"
