"""Actors for ``bench.profile_hop``, in a module of their own so that Thespian's actor processes
import them by name: a relay standing in for a generator worker (asks the render worker for the
PNG, then sends it on in a ``SaveMeme``) and a sink standing in for a store worker (answers it).
Since 29ef1fb generator workers save on Redis themselves; the relay keeps the hop a PNG used to
make, the cost of a large message between two actors."""

from __future__ import annotations

import os
from typing import Any

from thespian.actors import Actor, ActorAddress

from actors.messages import Reply, Request
from memesys.pipeline.making import SaveMeme

PID = "pid"
SETUP = "setup"
GO = "go"


class Sink(Actor):
    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if msg == PID:
            self.send(sender, os.getpid())
        elif isinstance(msg, Request):
            self.send(sender, Reply(msg.correlation_id, "saved"))


class Relay(Actor):
    """("setup", worker, sink) once; then ("go", RenderMeme, meme) answers the PNG's size."""

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if msg == PID:
            self.send(sender, os.getpid())
        elif isinstance(msg, tuple) and msg[0] == SETUP:
            self.worker, self.sink = msg[1], msg[2]
            self.send(sender, "ok")
        elif isinstance(msg, tuple) and msg[0] == GO:
            self.asker, self.meme = sender, msg[2]
            self.send(self.worker, Request(msg[1]))
        elif isinstance(msg, Reply) and isinstance(msg.payload, bytes):
            self.png = msg.payload
            self.send(self.sink, Request(SaveMeme(self.meme, msg.payload, "key")))
        elif isinstance(msg, Reply):
            self.send(self.asker, len(self.png) if msg.ok else msg.error)
