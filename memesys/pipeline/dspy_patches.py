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

3. DSPy's advisory pricing of each answer runs on the loop. ``aexecute`` hands
   ``_price_result`` to a worker thread (``asyncio.to_thread``) after every call, in case the
   cost map still has to be loaded (a download on first use). :func:`apply` loads it, after
   which pricing takes ~20 µs, while the hop cost a thread hand-off and two GIL switches a
   call. (memesys prices calls itself, ``memesys.llm.budget``; DSPy's figure is advisory.)
   ``aexecute`` looks ``asyncio`` up in its module, so that name becomes
   :data:`PRICING_ON_THE_LOOP`: ``asyncio`` itself, but for a ``to_thread`` that runs
   ``_price_result`` in place.

Whoever builds a meme program for serving calls :func:`apply` at start-up: the daemon's
workers (``memesys.tree``) and the in-process engine (``memesys.inprocess``). It is
idempotent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import dspy
import dspy.adapters.utils as dspy_adapter_utils
import dspy.clients.execution as dspy_execution
from dspy.clients.base_lm import BaseLM, warn_legacy_lm, warn_openai_messages
from dspy.clients.execution import aexecute, finalize, prepare
from dspy.clients.model_metadata import source_info
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

T = TypeVar("T")
DSPY_PRICE_RESULT = dspy_execution._price_result  # what patch 3 runs in place


class _PricingOnTheLoop:
    """``asyncio`` as ``dspy.clients.execution`` sees it once patched (patch 3): the same module
    but for ``to_thread``, which runs DSPy's advisory pricing in place."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def to_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if fn is DSPY_PRICE_RESULT:
            priced: T = fn(*args, **kwargs)
            return priced
        return await asyncio.to_thread(fn, *args, **kwargs)


PRICING_ON_THE_LOOP = _PricingOnTheLoop()


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
    return (
        dspy_adapter_utils.TypeAdapter is type_adapter
        and BaseLM.acall is acall_on_the_loop
        and dspy_execution.asyncio is PRICING_ON_THE_LOOP
    )


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
        # DSPy loads its cost map on first use (unless LITELLM_LOCAL_MODEL_COST_MAP, a
        # download of up to 5 s): here, before patch 3 prices on a loop
        source_info()
        dspy_execution.asyncio = PRICING_ON_THE_LOOP
        return True
