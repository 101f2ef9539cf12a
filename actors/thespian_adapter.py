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

4. :func:`cheap_message_descriptions` -- stop formatting every message as text for DEBUG lines
   that are then dropped. For every message, the sender calls ``TransmitIntent.identify()``
   twice (``thesplog('Attempting intent %s', intent.identify(), level=DEBUG)`` in
   ``system/systemCommon.py``, ``'actualTransmit of %s'`` in
   ``system/transport/asyncTransportBase.py``) and the receiver ``ReceiveEnvelope.identify()``
   once (``'ACTOR got %s'`` in ``system/actorManager.py``). The arguments are evaluated before
   ``thesplog`` compares the level with ``THESPLOG_THRESHOLD`` (WARNING by default), and
   ``identify()`` is ``str(message)``, cut to 150 characters only after the whole text is
   built: the full ``repr`` of a reply carrying a PNG (~2 ms for 80 KB, three times a hop).
   Both ``identify`` methods are replaced by versions that return a :class:`Described`,
   formatted only if a log line is written, and then as :func:`describe`'s bounded text.
   Applied when this module is imported (``actors.system`` imports it before the system
   starts, so every forked Thespian process has it); ``tests/test_render_messages.py``.

5. :func:`follow_starter` -- the admin ends with the process that started the system, and takes
   the tree with it. Thespian's admin runs ``MultiProcAdmin.run`` (its main loop) in a process
   double-forked from the starter (``startAdmin`` in ``system/multiprocCommon.py``: ``setsid``,
   ``fork``, the middle process exits), so no parent-death signal can tie it to the starter.
   ``run`` is replaced (at import, in every future fork) by a version that first watches the
   starter's pidfd (:func:`actors.lifeline.on_end`), inherited from the starter; when the
   starter ends, the admin SIGKILLs its own process group: itself, its logger and every actor
   (``setsid`` made that group, and actors are forked into it). A process an actor starts in
   a session of its own is outside the group: the actor ties it to itself
   (:func:`actors.lifeline.die_with_parent`). Applied at import;
   ``tests/test_runtime_lifeline.py``.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from thespian.actors import ActorAddress, ActorSystem
from thespian.system import transport as thespian_transport  # (4) internal: identify()
from thespian.system.multiprocCommon import MultiProcAdmin  # (5) internal: the admin's loop
from thespian.system.transport import IPBase  # (1) internal: the bind address

from actors.lifeline import on_end

_TRANSMIT_SLICE = datetime.timedelta(seconds=0.5)


def harden_bind(host: str) -> None:
    """(1) Bind every Thespian socket of this process and of its future forks to ``host``.

    Thespian binds ``('', port)`` for externally reachable addresses (all interfaces). The
    advertised address comes from ``THESPIAN_BASE_IPADDR``; the bind from ``bindArgs``.
    """
    os.environ["THESPIAN_BASE_IPADDR"] = host

    def bind_args(self: Any) -> tuple[tuple[str, int]]:
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


def transmit(
    ctx: ActorSystem, outgoing: list[tuple[ActorAddress, Any]], timeout_s: float
) -> list[NotSent | None]:
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
    return [
        watch
        if isinstance(watch, NotSent)
        else NotSent("dead", f"{target} is gone ({watch.failure})")
        if watch.failed
        else late
        for (target, _), watch in zip(outgoing, watches)
    ]


# --- (4) message descriptions --------------------------------------------------------------

SHOW_CHARS = thespian_transport.MAX_SHOWLEN  # what Thespian keeps of a message's text: 150


class Described:
    """Text made only when it is formatted (``str``, ``%s``); pickles as that text."""

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[], str]) -> None:
        self._make = make

    def __str__(self) -> str:
        return self._make()

    __repr__ = __str__

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        return (str, (str(self),))


def describe(message: Any, room: int = SHOW_CHARS) -> str:
    """A short text for ``message`` that formats no more of it than about ``room`` characters
    need: bytes show as their size, strings and containers are cut, a dataclass shows its
    ``repr`` fields; anything else is ``str()`` (Thespian's own messages, addresses)."""
    try:
        return _describe(message, room)
    except Exception:
        return "<message>"


def _describe(obj: Any, room: int) -> str:
    if isinstance(obj, (bytes, bytearray)):
        return f"<{len(obj)} bytes>"
    if isinstance(obj, memoryview):
        return f"<{obj.nbytes} bytes>"
    if isinstance(obj, str):
        return repr(obj) if len(obj) <= room else repr(obj[: max(room, 8)]) + "..."
    if room <= 0:
        return "..."
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = ((f"{f.name}=", getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr)
        return _describe_items(f"{type(obj).__name__}(", fields, ")", room)
    if isinstance(obj, dict):
        pairs = ((f"{_describe(k, 40)}: ", v) for k, v in obj.items())
        return _describe_items("{", pairs, "}", room)
    if isinstance(obj, (list, tuple, set, frozenset)):
        opening, closing = {list: ("[", "]"), tuple: ("(", ")")}.get(type(obj), ("{", "}"))
        return _describe_items(opening, (("", v) for v in obj), closing, room)
    text = str(obj)
    return text if len(text) <= room else text[:room] + "..."


def _describe_items(opening: str, items: Iterable[tuple[str, Any]], closing: str, room: int) -> str:
    parts: list[str] = []
    used = len(opening)
    for prefix, value in items:
        if used >= room:
            parts.append("...")
            break
        part = prefix + _describe(value, room - used - len(prefix))
        parts.append(part)
        used += len(part) + 2
    return opening + ", ".join(parts) + closing


def _receive_identify(self: Any) -> Described:
    return Described(lambda: f"ReceiveEnvelope(from: {self.sender}, msg: {describe(self.message)})")


def _transmit_identify(self: Any) -> Described:
    """Thespian 4.0.1's ``TransmitIntent.identify`` with :func:`describe` for ``str(message)``."""

    def text() -> str:
        parts = [
            str(self.targetAddr),
            "pending" if self.result is None else "=" + str(self.result),
            "" if self.result is not None else "ExpiresIn_" + str(self.delay()),
            "WAITSLOT" if getattr(self, "_awaitingTXSlot", False) else None,
            f"retry#{self._attempts}" if self._attempts else "",
            str(type(self.message)),
            describe(self.message),
            f"quit_{self._quitTime.view().remaining()!s}",
            f"retry_{self._retryTime.view().remaining()!s}"
            if getattr(self, "_retryTime", None)
            else None,
            f"pause_{self._pauseUntil.view().remaining()!s}"
            if getattr(self, "_pauseUntil", None)
            else None,
        ]
        return "TransportIntent(" + "-".join(filter(None, parts)) + ")"

    return Described(text)


def cheap_message_descriptions() -> None:
    """(4) Make ``identify()`` of Thespian's envelopes and transmit intents lazy and bounded,
    in this process and its future forks. Idempotent."""
    thespian_transport.ReceiveEnvelope.identify = _receive_identify
    thespian_transport.ReceiveEnvelope.__str__ = lambda self: str(self.identify())
    thespian_transport.TransmitIntent.identify = _transmit_identify


cheap_message_descriptions()


# --- (5) the admin follows the starter ------------------------------------------------------

# The starter's pidfd and process group while it starts a system (None otherwise); a fork
# inherits both, so the admin Thespian double-forks from the starter finds them here.
_starter: tuple[int, int] | None = None
_thespian_admin_run = MultiProcAdmin.run


def follow_starter(pidfd: int | None) -> None:
    """(5) Let an admin forked from this process from now on end with the process of
    ``pidfd`` (this one: :func:`actors.lifeline.lifeline`); None: no longer."""
    global _starter
    _starter = None if pidfd is None else (pidfd, os.getpgrp())


def _run_admin(self: Any) -> Any:
    """Thespian's admin loop, once the starter is watched."""
    if _starter is not None:
        pidfd, starter_group = _starter
        on_end(pidfd, lambda: _end_tree(starter_group))
    return _thespian_admin_run(self)


def _end_tree(starter_group: int) -> None:
    """SIGKILL this admin's process group (the admin, its logger, every actor); never a group
    the starter was in (should a Thespian not ``setsid`` its admin: then the admin alone)."""
    group = os.getpgrp()
    if group == starter_group:
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        os.killpg(group, signal.SIGKILL)


MultiProcAdmin.run = _run_admin
