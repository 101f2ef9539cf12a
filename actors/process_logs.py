"""What the log records of an actor's process carry, and which of them it keeps to itself.

Thespian sends every record an actor process makes to its logger process, where the handlers
of the system's logging dict (``logDefs``) write it. In the actor process it replaces the
logging tree with one whose root is at the dict's lowest level, so the levels the dict sets
per logger are lost there: a record below its logger's level would still travel to the logger
process, only to be dropped. :func:`enter`, run in an actor's process once it knows where it
is in the tree, sets those levels again (:func:`keep_levels` learns them where the system
starts; the processes forked from there inherit them) and puts the actor's path on every
record of the process (``record.actor_path``), for whatever formats it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

_levels: dict[str, Any] = {}  # logger name ("": the root) -> level
_path = ""
_stamping = False


def keep_levels(log_defs: Mapping[str, Any]) -> None:
    """Remember the levels of a logging dict (``logging.config.dictConfig`` form)."""
    levels = {
        name: spec["level"]
        for name, spec in log_defs.get("loggers", {}).items()
        if spec.get("level") is not None
    }
    root = log_defs.get("root", {}).get("level")
    if root is not None:
        levels[""] = root
    _levels.clear()
    _levels.update(levels)


def enter(path: str) -> None:
    """This process is the actor at ``path``: its loggers' levels and its records' path."""
    global _path, _stamping
    for name, level in _levels.items():
        logging.getLogger(name or None).setLevel(level)
    _path = path
    if _stamping:
        return
    make = logging.getLogRecordFactory()

    def stamped(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if _path:
            record.actor_path = _path
        return record

    logging.setLogRecordFactory(stamped)
    _stamping = True


def _forked() -> None:
    """A child process is not its parent: no path until it is told its own."""
    global _path
    _path = ""


os.register_at_fork(after_in_child=_forked)
