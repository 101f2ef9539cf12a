"""Actor-system lifecycle: start, attach, find the root, ordered shutdown, reaping.

Thespian's admin and actors bind 0.0.0.0 and unpickle whatever arrives. :func:`harden_bind`
(from :mod:`actors.thespian_adapter`, where every use of Thespian internals lives) makes every
socket bind one configured host (loopback by default) before the system starts; actor
processes are forked from the starter, so they inherit it.

A system lives no longer than the process that started it: :func:`start_system` hands the
admin a pidfd on the starter (:mod:`actors.lifeline`), and when the starter ends, however it
ends, the admin kills itself, its logger and every actor. The next start finds the admin port
free.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil
from thespian.actors import ActorAddress, ActorExitRequest, ActorSystem

from actors import process_logs
from actors.base import BaseActor
from actors.lifeline import lifeline
from actors.messages import (
    Booting,
    Failure,
    FailureCode,
    Init,
    InitFailed,
    Reply,
    Request,
    Started,
    Stop,
    Stopped,
    unpack,
)
from actors.spec import ChildSpec
from actors.thespian_adapter import (
    follow_starter,
    harden_bind,  # re-exported: actors.system.harden_bind
)

log = logging.getLogger("actors.system")

BASE = "multiprocTCPBase"


class NoSystemRunning(RuntimeError):
    """Nothing listens on the admin port: attach refuses to start a system by accident."""


class SystemAlreadyRunning(RuntimeError):
    """Another actor system already owns the admin port."""


class RootStartFailed(RuntimeError):
    pass


def logging_config(level: str) -> dict[str, Any]:
    """A plain logging dict at ``level``: every process's records on stderr as text."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s"}
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "level": level}
        },
        "root": {"handlers": ["stderr"], "level": level},
    }


@dataclass(frozen=True)
class SystemConfig:
    """``log_defs``: the logging dict (``logging.config.dictConfig`` form) that Thespian's
    logger process writes every actor's records with (Thespian needs one: ``logDefs=False``
    crashes every actor in 4.0.1)."""

    admin_port: int
    bind_host: str = "127.0.0.1"
    log_defs: Mapping[str, Any] = field(default_factory=lambda: logging_config("INFO"))


def admin_running(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_system(cfg: SystemConfig) -> ActorSystem:
    """Start a new system owning ``cfg.admin_port``, to end with this process; refuse to join
    a running one."""
    if admin_running(cfg.admin_port, cfg.bind_host):
        raise SystemAlreadyRunning(
            f"an actor system already listens on admin port {cfg.admin_port}"
        )
    harden_bind(cfg.bind_host)
    starter = lifeline()
    if starter is None:
        log.warning("no pidfd here: the actor system will outlive this process if it is killed")
    follow_starter(starter)  # the admin forked next inherits the pidfd and watches it
    process_logs.keep_levels(cfg.log_defs)  # every actor process forked from here keeps them
    try:
        asys = ActorSystem(BASE, {"Admin Port": cfg.admin_port}, logDefs=dict(cfg.log_defs))
    finally:
        follow_starter(None)
        if starter is not None:
            os.close(starter)
    _reap_launcher(cfg.admin_port)
    return asys


def _reap_launcher(port: int) -> None:
    """Wait for the process Thespian forked to launch the admin (setsid, fork, exit).

    Thespian detaches it and never waits for it, so it would stay our zombie child, and the
    leader of the admin's session, for as long as we live.
    """
    pid = admin_pid(port)
    if pid is None:
        return
    try:
        os.waitpid(os.getsid(pid), 0)
    except ChildProcessError:  # not our child: someone else started this admin
        pass


def attach(cfg: SystemConfig) -> ActorSystem:
    """A private handle on a running system; never starts one."""
    if not admin_running(cfg.admin_port, cfg.bind_host):
        raise NoSystemRunning(f"no actor system is running on admin port {cfg.admin_port}")
    harden_bind(cfg.bind_host)
    return ActorSystem(
        BASE,
        {"Admin Port": cfg.admin_port},
        logDefs=dict(cfg.log_defs),
        transientUnique=True,
    )


def admin_pid(port: int) -> int | None:
    """The pid of the admin listening on the admin port (for reaping its session).

    One system-wide socket scan finds a process holding the port; forked descendants (the
    logger) share the socket, so climb to its topmost ancestor in the session, short of the
    launcher that leads the session.
    """
    holder = next(
        (
            c.pid
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
        ),
        None,
    )
    if holder is None:
        return None
    try:
        sid, proc = os.getsid(holder), psutil.Process(holder)
        while (
            (parent := proc.parent()) is not None
            and parent.pid != sid
            and os.getsid(parent.pid) == sid
        ):
            proc = parent
    except (ProcessLookupError, psutil.NoSuchProcess):
        return None
    return proc.pid


def session_processes(sid: int) -> list[psutil.Process]:
    """Every live process of a session (the admin calls ``setsid``; its actors stay in it).

    Zombies are left out: they have exited and hold nothing, only their parent can reap them.
    """
    found = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.pid != os.getpid()
                and os.getsid(proc.pid) == sid
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return found


def reap(sid: int, grace_s: float = 0.0) -> int:
    """SIGKILL whatever is left of an actor system's session after ``grace_s`` seconds in
    which it may still exit by itself; returns how many were killed."""
    deadline = time.monotonic() + grace_s
    while session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = session_processes(sid)
    for proc in victims:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=2)
    return len(victims)


class _Absent(BaseActor):
    """Stands in for a missing root when looked up by global name: refuses and exits."""

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        for request in unpack(msg):
            if isinstance(request, Request):
                self.send(
                    request.reply_to or sender,
                    Reply(
                        request.correlation_id,
                        None,
                        Failure(FailureCode.UNAVAILABLE, "the root supervisor is not running"),
                    ),
                )
        if not isinstance(msg, ActorExitRequest):
            self.send(self.myAddress, ActorExitRequest())


def initialized(asys: ActorSystem, actor: ActorAddress, init: Init, timeout: float) -> object:
    """Send ``init`` to ``actor`` and return its answer past ``Booting``: ``Started``,
    ``InitFailed``, or None if none came within ``timeout``."""
    deadline = time.monotonic() + timeout
    answer = asys.ask(actor, init, timeout)
    while isinstance(answer, Booting):
        answer = asys.listen(max(0.0, deadline - time.monotonic()))
    return answer


def start_root(asys: ActorSystem, spec: ChildSpec, admin_port: int, timeout: float) -> ActorAddress:
    """Create the root under a global name and wait until its whole tree has started."""
    root = asys.createActor(spec.actor, globalName=spec.name)
    answer = initialized(asys, root, Init(spec.name, spec.args, admin_port), timeout)
    if isinstance(answer, Started):
        return root
    asys.tell(root, ActorExitRequest())
    if isinstance(answer, InitFailed):
        raise RootStartFailed(f"root {spec.name} failed to start: {answer.reason}")
    raise RootStartFailed(f"root {spec.name} did not start within {timeout:g} s")


def find_root(asys: ActorSystem, name: str) -> ActorAddress:
    """The running root by global name, or a stand-in that answers ``unavailable``."""
    return asys.createActor(_Absent, globalName=name)


def ask(asys: ActorSystem, target: ActorAddress, payload: Any, timeout: float) -> Reply:
    """A blocking request with correlation: replies to earlier, timed-out asks are dropped.
    The request's deadline is ``timeout`` from now."""
    request = Request(payload, deadline=time.time() + timeout)
    deadline = time.monotonic() + timeout
    answer = asys.ask(target, request, timeout)
    while True:
        for reply in unpack(answer):  # a late reply may share a batch with ours
            if isinstance(reply, Reply) and reply.correlation_id == request.correlation_id:
                return reply
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Reply(
                request.correlation_id,
                None,
                Failure(FailureCode.TIMEOUT, f"no answer within {timeout:g} s"),
            )
        answer = asys.listen(remaining)


def stop_tree(asys: ActorSystem, root: ActorAddress, timeout: float) -> bool:
    """Ordered shutdown of the tree (reverse start order, per-child timeouts)."""
    stop = Stop()
    answer = asys.ask(root, stop, timeout)
    deadline = time.monotonic() + timeout
    while not (isinstance(answer, Stopped) and answer.correlation_id == stop.correlation_id):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        answer = asys.listen(remaining)
    return True


def session_id(admin_port: int) -> int | None:
    """The session of a running system's admin: every actor process is in it."""
    pid = admin_pid(admin_port)
    return os.getsid(pid) if pid else None


def shutdown(
    asys: ActorSystem,
    admin_port: int,
    root: ActorAddress | None = None,
    timeout: float = 10.0,
    sid: int | None = None,
) -> int:
    """Stop the tree in order, shut the system down, then reap any survivor.

    ``sid`` (from :func:`session_id` at start) lets the reaping work even when the admin is
    already gone. Returns the number of processes that had to be killed (0 on a clean stop).
    """
    if sid is None:
        sid = session_id(admin_port)
    if admin_running(admin_port):
        if root is not None and not stop_tree(asys, root, timeout):
            log.error("ordered shutdown did not finish within %.1f s", timeout)
        asys.shutdown()
    if sid is None:
        return 0
    killed = reap(sid, grace_s=2.0)
    if killed:
        log.warning("killed %d actor processes left after shutdown", killed)
    return killed
