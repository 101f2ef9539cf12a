"""memesys.pipeline.dspy_patches: applied once, explicitly, only on a tested DSPy, and the DSPy
functions it patches are the ones it was checked against."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import warnings
from collections.abc import Callable
from typing import ClassVar

import dspy
import dspy.adapters.utils as dspy_utils
import pytest

from memesys.pipeline import dspy_patches
from memesys.pipeline.dspy_patches import type_adapter

# sha256 (first 16 hex digits) of the source of every function of dspy.adapters.utils that
# builds a TypeAdapter, as of DSPy 3.4.1. A change means DSPy changed what the patch reaches:
# re-read memesys/pipeline/dspy_patches.py against the new code, then record the new hashes.
PATCHED_SOURCES = {
    "serialize_for_json": "989096592c125ae9",
    "_get_json_schema": "6edcf4c3b3602d05",
    "parse_value": "95a949226a906f50",
}


def _source_hash(function: Callable[..., object]) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def test_the_patched_dspy_functions_are_the_ones_the_patch_was_checked_against() -> None:
    module_source = inspect.getsource(dspy_utils)
    builders = {
        name
        for name, obj in vars(dspy_utils).items()
        if inspect.isfunction(obj)
        and obj.__module__ == dspy_utils.__name__
        and "TypeAdapter" in inspect.getsource(obj)
    }
    assert builders == set(PATCHED_SOURCES), "another DSPy function builds a TypeAdapter"
    assert "from pydantic import TypeAdapter" in module_source  # looked up in the module
    for name, recorded in PATCHED_SOURCES.items():
        assert _source_hash(getattr(dspy_utils, name)) == recorded, name


# DSPy 3.4.1's BaseLM.acall, which patch 2 replaces by itself without the to_thread hop.
ACALL_SOURCE = "62d038fbc5149f15"


def test_the_patched_acall_is_the_one_the_patch_was_checked_against() -> None:
    assert _source_hash(dspy_patches.DSPY_ACALL.__wrapped__) == ACALL_SOURCE


# DSPy 3.4.1's aexecute, whose asyncio.to_thread(_price_result, ...) patch 3 runs in place.
AEXECUTE_SOURCE = "8e7c28f2cb294990"


def test_the_pricing_step_is_the_one_the_patch_was_checked_against() -> None:
    import dspy.clients.execution as dspy_execution

    assert _source_hash(dspy_execution.aexecute) == AEXECUTE_SOURCE
    assert "asyncio.to_thread(_price_result," in inspect.getsource(dspy_execution.aexecute)
    assert dspy_patches.DSPY_PRICE_RESULT is dspy_execution._price_result


async def test_an_async_call_prepares_and_prices_on_the_loop_without_a_thread_or_history() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from dspy.clients.base_lm import GLOBAL_HISTORY

    from memesys.pipeline.lm import offline_lm
    from memesys.pipeline.predict import run

    class Counting(ThreadPoolExecutor):
        """Names what asyncio.to_thread hands it (a partial of ``ctx.run, func``)."""

        submitted: ClassVar[list[str]] = []

        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            Counting.submitted.append(getattr(fn, "args", (fn,))[0].__name__)
            return super().submit(fn, *args, **kwargs)

    assert dspy_patches.apply()
    asyncio.get_running_loop().set_default_executor(Counting(2))
    catalogue = "drake: one thing preferred over another"
    lm = offline_lm()
    before = len(GLOBAL_HISTORY)
    answer, _ = await run(lm, "select", None, topic="cats", catalogue=catalogue, seed=0)
    # neither the prepare step nor DSPy's advisory pricing of the answer takes a thread
    assert answer.format_name == "drake" and Counting.submitted == []
    # and DSPy keeps no copy of the call (memesys records its calls itself)
    assert lm.lm.history == [] and len(GLOBAL_HISTORY) == before


def test_apply_is_idempotent_and_the_installed_dspy_is_tested() -> None:
    assert dspy_patches.tested(dspy.__version__)
    assert dspy_patches.apply() and dspy_patches.apply()
    assert dspy_patches.applied()


def test_an_untested_dspy_is_left_alone_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not dspy_patches.tested("3.5.0") and not dspy_patches.tested("2.6.1")
    assert dspy_patches.tested("3.4.0") and not dspy_patches.tested("garbage")
    monkeypatch.setattr(dspy_utils, "TypeAdapter", dspy_utils.TypeAdapter)  # restored after
    monkeypatch.setattr(dspy_utils, "TypeAdapter", object)
    monkeypatch.setattr(dspy, "__version__", "3.9.0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dspy_patches.apply() is False
    assert dspy_utils.TypeAdapter is object
    assert any("outside the versions" in str(w.message) for w in caught)


def test_dspy_formats_and_parses_values_as_before_with_one_type_adapter_per_type() -> None:
    import typing

    import dspy.adapters.utils as dspy_utils
    from pydantic import BaseModel, TypeAdapter

    class Point(BaseModel):
        x: int

    def original(value):
        try:
            return TypeAdapter(type(value)).dump_python(value, mode="json", fallback=str)
        except Exception:
            return str(value)

    assert dspy_patches.apply()
    assert dspy_utils.TypeAdapter is type_adapter
    assert type_adapter(list[str]) is type_adapter(list[str])
    for value in (
        "coffee",
        ["a", "b"],
        {"k": [1, 2]},
        3,
        0.5,
        None,
        True,
        Point(x=1),
        ("t", 1),
        object(),
    ):
        expected = original(value)
        got = dspy_utils.serialize_for_json(value)
        assert got == expected or (type(value) is object and isinstance(got, str)), value
    for text, annotation, expected in (
        ('["a", "b"]', list[str], ["a", "b"]),
        ("7", int, 7),
        ("0.5", float, 0.5),
        ("yes", typing.Literal["yes", "no"], "yes"),
        ('{"x": 2}', Point, Point(x=2)),
        ("true", bool, True),
        ("maybe", typing.Optional[str], "maybe"),  # noqa: UP045 (the old spelling is the case)
    ):
        assert dspy_utils.parse_value(text, annotation) == expected, text
    with pytest.raises(ValueError):
        dspy_utils.parse_value("not a number", int)
