"""Every use of Thespian internals by the runtime, and the bind hardening, in one module.

The rest of :mod:`actors` uses only Thespian's public API (``thespian.actors``: ``Actor``,
``ActorSystem``, ``ActorAddress``, ``ActorExitRequest``, ``ChildActorExited``,
``WakeupMessage``, ``PoisonMessage``, ``ActorSystem.private()``, ``wakeupAfter``...). The
public API cannot do the three things below, so this module reaches into Thespian 4.0.1's
private code for them. Each is pinned to that version: re-check them on any Thespian upgrade
(``tests/test_hardening.py`` covers 1, ``tests/test_bridge.py`` and
``tests/test_direct_dispatch.py`` cover 2 and 3).

1. :func:`harden_bind` -- bind every socket to one host (loopback by default). Thespian's
   admin and actors bind ``('', port)``, all interfaces, and unpickle whatever arrives: anyone
   who can connect runs code as the daemon's user. Thespian has no setting for the bind
   address: the socket is bound in ``thespian/system/transport/TCPTransport.py`` with the
   address's ``bindArgs`` (``thespian.system.transport.IPBase.IPActorAddress.bindArgs``),
   so the property is replaced. ``THESPIAN_BASE_IPADDR`` (public, read from the environment)
   sets the *advertised* address to the same host. Actor processes are forked from the
   process that starts the system, so the patch, applied before the system starts, reaches
   every actor.

2. :func:`context_address` -- the address of a private context (``ActorSystem.private()``),
   so that requests can name it in ``reply_to`` and a listener thread receives the replies of
   requests another thread sent. The public API never shows a context its own address; it
   is ``ctx._systemBase.transport.myAddress``.

3. :func:`transmit` -- send several messages at once and learn, per message, whether the
   target was dead. The public ``tell`` sends one message, waits for it, and drops a message
   to a dead address silently (an address dies whenever its actor restarts), so a request
   would only fail at its timeout. ``tell``'s own steps are used instead: ``_tx_to_actor``
   (schedules a transmit and returns a ``TransmitTrack`` whose ``failed``/``failure`` tell
   the outcome) and ``_run_transport(..., txonly=True)`` (runs the transport until every
   scheduled transmit is done). A refused connection is known in under a millisecond.
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from thespian.actors import ActorAddress, ActorSystem
from thespian.system.transport import IPBase  # (1) internal: the bind address

_TRANSMIT_SLICE = datetime.timedelta(seconds=0.5)


def harden_bind(host: str) -> None:
    """(1) Bind every Thespian socket of this process and of its future forks to ``host``.

    Thespian binds ``('', port)`` for externally reachable addresses (all interfaces). The
    advertised address comes from ``THESPIAN_BASE_IPADDR``; the bind from ``bindArgs``.
    """
    os.environ["THESPIAN_BASE_IPADDR"] = host

    def bind_args(self: Any) -> tuple:
        name, port = self.bindname[0], self.bindname[1]
        return ((host if name in ("", "0.0.0.0") else name, port),)

    IPBase.IPActorAddress.bindArgs = property(bind_args)


def context_address(ctx: ActorSystem) -> ActorAddress:
    """(2) The address of a private context: where messages for its ``listen`` go."""
    return ctx._systemBase.transport.myAddress


@dataclass(frozen=True)
class NotSent:
    """Why one message of :func:`transmit` did not reach its target.

    ``kind`` is ``"dead"`` (the target's address is dead: the message reached nobody),
    ``"error"`` (it could not be scheduled) or ``"late"`` (the transmits did not finish in
    time: it may or may not have arrived)."""

    kind: str
    detail: str


def transmit(ctx: ActorSystem, outgoing: list[tuple[ActorAddress, Any]],
             timeout_s: float) -> list[Optional[NotSent]]:
    """(3) Send every ``(target, message)`` at once from ``ctx`` and wait for the transmits;
    per message, ``None`` (delivered) or why not. Only one thread may use ``ctx``."""
    base = ctx._systemBase
    watches: list[Any] = []
    for target, message in outgoing:
        try:
            watches.append(base._tx_to_actor(target, message))
        except Exception as exc:
            watches.append(NotSent("error", str(exc)))
    deadline = time.monotonic() + timeout_s
    late = None
    while base._run_transport(_TRANSMIT_SLICE, txonly=True):
        if time.monotonic() > deadline:
            late = NotSent("late", f"could not send within {timeout_s:g} s")
            break
    return [watch if isinstance(watch, NotSent) else
            NotSent("dead", f"{target} is gone ({watch.failure})") if watch.failed else
            late for (target, _), watch in zip(outgoing, watches)]
