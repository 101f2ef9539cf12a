"""Every change memesys makes to DSPy's internals, in one module, applied by :func:`apply`.

The public API cannot do what follows, so this module reaches into DSPy's private code. Each
patch is pinned to the DSPy versions of pyproject's pin (:data:`TESTED`): outside them
:func:`apply` warns loudly and leaves DSPy as it is (the patches only save CPU; DSPy behaves
the same without them). ``tests/test_dspy_patches.py`` fails when a patched function changes.

1. One pydantic ``TypeAdapter`` per annotation in ``dspy.adapters.utils``. Its functions
   ``serialize_for_json`` (every input value formatted), ``parse_value`` (every output field
   parsed) and ``_get_json_schema`` build a ``TypeAdapter`` (schema generation, plugin lookup,
   ~0.1 ms) on each call: a quarter of a verifier worker's CPU, then a sixth of a stage call's.
   pydantic means TypeAdapters to be built once and reused; what they return is the same.
   They look the name ``TypeAdapter`` up in their module on every call, so replacing that
   module attribute with :func:`type_adapter` reaches them all.

2. ``BaseLM.acall`` prepares each call on the caller's loop. DSPy 3.4 sends its ``prepare``
   step to a worker thread (``asyncio.to_thread``) because a media snapshot may read local
   files; a meme's prompts are text, so the step only formats (well under a millisecond), and
   the hop put a thread and two context switches under every call the async path was meant
   to make threadless. :func:`acall_on_the_loop` is DSPy's ``acall`` without the hop.

Whoever builds a meme program for serving calls :func:`apply` at start-up: the daemon's
workers (``memesys.tree``) and the in-process engine (``memesys.inprocess``). It is
idempotent.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from typing import Any

import dspy
import dspy.adapters.utils as dspy_adapter_utils
from dspy.clients.base_lm import BaseLM, warn_legacy_lm, warn_openai_messages
from dspy.clients.execution import aexecute, finalize, prepare
from dspy.utils.callback import with_callbacks
from pydantic import TypeAdapter

# The DSPy versions these patches were checked against: [low, high) as (major, minor).
TESTED = ((3, 4), (3, 5))

log = logging.getLogger(__name__)
_lock = threading.Lock()


@functools.lru_cache(maxsize=256)
def _cached_type_adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def type_adapter(annotation: Any, *args: Any, **kwargs: Any) -> TypeAdapter[Any]:
    """pydantic's ``TypeAdapter(annotation)``, built once per annotation (patch 1). An
    unhashable annotation, or one with options, gets a new one as before."""
    if not args and not kwargs:
        try:
            return _cached_type_adapter(annotation)
        except TypeError:  # unhashable
            pass
    return TypeAdapter(annotation, *args, **kwargs)


DSPY_ACALL = BaseLM.acall  # DSPy's own, as imported (tests/test_dspy_patches.py reads it)


async def _acall(self: BaseLM, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
    call = prepare(self, prompt, messages, kwargs, asynchronous=True)
    if not call.managed:
        warn_legacy_lm()
    warn_openai_messages(self, messages)
    return finalize(self, call, await aexecute(self, call))


acall_on_the_loop = with_callbacks(_acall)
acall_on_the_loop.__doc__ = "BaseLM.acall, its prepare step on the caller's loop (patch 2)."


def tested(version: str) -> bool:
    """Whether DSPy ``version`` ("3.4.1") is within :data:`TESTED`."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    low, high = TESTED
    return low <= major_minor < high


def applied() -> bool:
    """Whether this process runs DSPy patched."""
    return dspy_adapter_utils.TypeAdapter is type_adapter and BaseLM.acall is acall_on_the_loop


def apply() -> bool:
    """Patch DSPy in this process (once; later calls do nothing) and say whether it is
    patched. A DSPy outside :data:`TESTED` is left alone, with a RuntimeWarning and an error
    in the log: re-check every patch above before widening the range."""
    with _lock:
        if applied():
            return True
        if not tested(dspy.__version__):
            message = (
                f"DSPy {dspy.__version__} is outside the versions memesys's DSPy patches were "
                f"checked against ({'.'.join(map(str, TESTED[0]))} <= v < "
                f"{'.'.join(map(str, TESTED[1]))}): they are not applied (see "
                f"memesys/pipeline/dspy_patches.py)"
            )
            log.error(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            return False
        dspy_adapter_utils.TypeAdapter = type_adapter
        BaseLM.acall = acall_on_the_loop
        return True
