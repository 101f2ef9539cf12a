"""The one error vocabulary (memesys.errors.ErrorCode), walked both ways.

Every contract code has a status, a retry policy and a clean default message; every code the
runtime or any memesys module can answer is in the contract (or translated into it); the
gateway and the OpenAPI document take their codes from the enum, not from a copy.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

import memesys
from actors.messages import FailureCode
from memesys.errors import (
    RUNTIME_CODES,
    ErrorCode,
    MemesysError,
    client_message,
    leaks,
    translate,
)

REPO = Path(__file__).resolve().parent.parent
MEMESYS = Path(memesys.__file__).parent
ACTORS = REPO / "actors"


def sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "testing" not in p.relative_to(root).parts)


# -- the enum itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_every_code_has_a_status_a_retry_policy_and_a_clean_message(code: ErrorCode) -> None:
    assert re.fullmatch(r"[a-z][a-z_]*", code.value)
    assert 400 <= code.status <= 599
    assert isinstance(code.retryable, bool) and isinstance(code.detail, bool)
    assert code.message and not leaks(code.message)
    if code.status < 500 and code.status != 429:  # the client's fault: it fails the same way
        assert not code.retryable and code.retry_after is None
    if code.status in (429, 503):  # come back later, and when
        assert code.retryable and isinstance(code.retry_after, int) and code.retry_after >= 1
    if code.retry_after is not None:
        assert code.retryable and code.status in (429, 503)


def test_codes_are_strings_on_the_wire() -> None:
    assert ErrorCode("llm_unavailable") is ErrorCode.LLM_UNAVAILABLE
    assert ErrorCode.LLM_UNAVAILABLE == "llm_unavailable"
    assert f"{ErrorCode.TIMEOUT}" == str(ErrorCode.TIMEOUT) == "timeout"
    assert json.dumps({"code": ErrorCode.INTERNAL}) == '{"code": "internal"}'


def test_the_codes_later_issues_name_are_here() -> None:
    for name, status in (
        ("llm_unavailable", 503),
        ("llm_rate_limited", 503),
        ("budget_exhausted", 503),
        ("malformed_json", 400),
        ("body_too_large", 413),
        ("unsupported_media_type", 415),
        ("not_found", 404),
        ("method_not_allowed", 405),
        ("invalid_field", 422),
        ("internal", 500),
    ):
        assert ErrorCode(name).status == status


def test_importing_the_vocabulary_loads_no_runtime_dspy_or_aiohttp() -> None:
    probe = (
        "import sys, memesys.errors; print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'actors', 'thespian', 'dspy', 'aiohttp', 'redis', 'PIL'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert out.strip() == "[]"


# -- the runtime's codes -----------------------------------------------------------------------


def runtime_codes() -> set[str]:
    """Every code the actors runtime puts in a Failure: the values of its one enum, which is
    all its source uses (``Failure(FailureCode.CRASHED, ...)``, never a literal)."""
    for path in sources(ACTORS):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Failure":
                first = node.args[0] if node.args else None
                assert not isinstance(first, ast.Constant), f"{path}:{node.lineno}: a literal code"
    return {code.value for code in FailureCode}


def test_every_runtime_code_is_translated() -> None:
    found = runtime_codes()
    assert {
        "crashed",
        "worker_lost",
        "overloaded",
        "unavailable",
        "timeout",
        "dead_address",
    } <= found  # the scan works
    untranslated = sorted(code for code in found if translate(code) is None)
    assert untranslated == [], "add them to memesys.errors.RUNTIME_CODES"


def test_runtime_internals_become_contract_codes() -> None:
    assert translate("crashed") is ErrorCode.WORKER_LOST
    assert translate("dead_address") is ErrorCode.UNAVAILABLE
    assert translate("error") is ErrorCode.INTERNAL
    for raw, contract in RUNTIME_CODES.items():
        assert translate(raw) is contract
    for code in ErrorCode:
        assert translate(code.value) is code
    assert translate("no_such_code") is None


# -- memesys's codes ---------------------------------------------------------------------------


def failure_codes_in(path: Path) -> list[tuple[int, ast.expr]]:
    """The first argument of every ``RequestFailed(...)``/``Failure(...)`` in a file."""
    return [
        (node.lineno, node.args[0])
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) in ("RequestFailed", "Failure")
        and node.args
    ]


def test_memesys_raises_only_enum_codes() -> None:
    """A literal code is a second vocabulary; ``ErrorCode.X`` must exist; anything else
    passes on a code that came with an exception (``exc.code``) or a failure."""
    literal, unknown, checked = [], [], 0
    for path in sources(MEMESYS):
        for line, arg in failure_codes_in(path):
            where = f"{path.relative_to(REPO)}:{line}"
            checked += 1
            if isinstance(arg, ast.Constant):
                literal.append(where)
            elif isinstance(arg, ast.Attribute) and getattr(arg.value, "id", None) == "ErrorCode":
                if arg.attr not in ErrorCode.__members__:
                    unknown.append(where)
            else:
                assert isinstance(arg, (ast.Attribute, ast.IfExp)), where
    assert checked >= 5  # the scan works (5 sites since the conversions became RequestFailed.of)
    assert literal == [] and unknown == []


def test_no_code_is_compared_or_built_as_a_string() -> None:
    """``failure.code == "overloaded"`` or ``{"code": "internal"}`` would be a second
    vocabulary: memesys compares and builds codes through the enum."""
    spelled = []
    for path in sources(MEMESYS):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(isinstance(n, ast.Attribute) and n.attr == "code" for n in sides) and any(
                    isinstance(n, ast.Constant) and isinstance(n.value, str) for n in sides
                ):
                    spelled.append(f"{path.relative_to(REPO)}:{node.lineno}")
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "code"
                        and isinstance(value, ast.Constant)
                    ):
                        spelled.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert spelled == []


def all_subclasses(cls: type) -> set[type]:
    return {cls} | {s for sub in cls.__subclasses__() for s in all_subclasses(sub)}


def test_each_layer_has_one_error_root_that_knows_its_code() -> None:
    from memesys.http.validation import InvalidField
    from memesys.pipeline.decision import Refused
    from memesys.pipeline.errors import PipelineError
    from memesys.pipeline.predict import OutputError
    from memesys.pipeline.writing import CaptionError
    from memesys.render.image import RenderError
    from memesys.storage.memes import InvalidCursor, StoreError

    assert issubclass(OutputError, PipelineError) and issubclass(CaptionError, OutputError)
    assert issubclass(Refused, PipelineError)
    assert issubclass(InvalidCursor, StoreError)
    for root in (PipelineError, StoreError, RenderError, InvalidField):
        assert issubclass(root, MemesysError)
    for cls in all_subclasses(MemesysError):
        assert isinstance(cls.code, ErrorCode), cls
    assert OutputError("x").code is ErrorCode.BAD_OUTPUT
    assert CaptionError("x").code is ErrorCode.BAD_OUTPUT
    assert Refused(ErrorCode.INAPPROPRIATE, "x").code is ErrorCode.INAPPROPRIATE
    assert StoreError("x").code is ErrorCode.STORE_ERROR
    assert InvalidCursor("x").code is ErrorCode.INVALID_FIELD
    assert RenderError("x").code is ErrorCode.RENDER_ERROR
    assert InvalidField("topic", "is required").code is ErrorCode.INVALID_FIELD


def test_the_store_worker_answers_a_forged_cursor_but_crashes_on_its_own_fault() -> None:
    """A client's bad cursor is ``invalid_field``; a ValueError of the store's own is a server
    fault: it is not answered as a client error but crashes the worker (``worker_lost``)."""
    from actors.base import RequestFailed
    from memesys.domain.messages import ListMemes
    from memesys.storage.memes import MemeStore
    from memesys.tree.store import StoreArgs, StoreWorker

    worker = StoreWorker.__new__(StoreWorker)  # no actor: only its request handling
    worker.args = StoreArgs("", "memesys", task_ttl_s=60, image_dir="")
    # a client that never connects: neither request reaches Redis
    worker.store = MemeStore(client=redis.Redis(port=1), images=None)
    with pytest.raises(RequestFailed) as answered:
        worker.handle(ListMemes(5, "forged"))
    assert answered.value.failure.code == ErrorCode.INVALID_FIELD
    assert "cursor" in answered.value.failure.message
    with pytest.raises(ValueError) as crashed:
        worker.handle(ListMemes(0, None))  # the gateway never asks for fewer than one
    assert not isinstance(crashed.value, RequestFailed)
    assert translate("crashed").status == 503


# -- what clients read -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "ActorAddr-(T|:40123) is gone",
        "store/worker-0 crashed: TypeError: x",
        "redis failed: Error 2 connecting to unix socket: /tmp/d/redis.sock.",
        "cannot reach redis://127.0.0.1:6379/0",
        "see /var/lib/memesys/data",
        "Traceback (most recent call last):",
        "<object object at 0x7f00deadbeef>",
        "litellm.RateLimitError: slow down",
    ],
)
def test_internals_never_reach_a_client(message: str) -> None:
    assert leaks(message)
    for code in ErrorCode:
        assert client_message(code, message) == code.message


@pytest.mark.parametrize(
    "message",
    [
        "the topic incites violence",
        "format: unknown meme format 'x'; GET /v1/formats lists them",
        "cursor: is not a cursor this server issued",
        "and/or",
    ],
)
def test_plain_messages_pass_where_the_code_shows_detail(message: str) -> None:
    assert not leaks(message)
    assert client_message(ErrorCode.INAPPROPRIATE, message) == message
    assert client_message(ErrorCode.STORE_ERROR, message) == ErrorCode.STORE_ERROR.message
    assert client_message(ErrorCode.INAPPROPRIATE, "") == ErrorCode.INAPPROPRIATE.message
    long = client_message(ErrorCode.BAD_OUTPUT, "x " * 1000)
    assert len(long) <= 500 and long.endswith("…")


# -- the gateway and the OpenAPI document --------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_the_gateway_answers_each_code_with_its_status(code: ErrorCode) -> None:
    from memesys.http.responses import error

    response = error(code)
    assert response.status == code.status
    assert json.loads(response.body) == {"error": {"code": code.value, "message": code.message}}
    if code.retry_after is not None:
        assert response.headers["Retry-After"] == str(code.retry_after)
        assert error(code, retry_after=0.2).headers["Retry-After"] == "1"
    else:
        assert "Retry-After" not in response.headers


def test_the_gateways_http_map_agrees_with_the_enum() -> None:
    from memesys.http.middleware import _HTTP_CODES

    for status, code in _HTTP_CODES.items():
        assert code.status == status
    assert {c for c in ErrorCode if c.status in (404, 405, 413, 415)} <= set(_HTTP_CODES.values())


def test_the_gateway_keeps_no_code_table_of_its_own() -> None:
    app = (MEMESYS / "http" / "app.py").read_text()
    assert "_STATUS" not in app
    for code in ErrorCode:
        assert f'"{code.value}"' not in app, code


def test_the_openapi_error_schema_enumerates_exactly_the_enum() -> None:
    from memesys.http.openapi import openapi_document

    OPENAPI = openapi_document(200)
    schema = OPENAPI["components"]["schemas"]["ErrorDetail"]
    assert schema["properties"]["code"]["enum"] == [code.value for code in ErrorCode]
    assert schema["required"] == ["code", "message"]
    documented = {
        int(status)
        for path in OPENAPI["paths"].values()
        for op in path.values()
        if isinstance(op, dict)
        for status in op.get("responses", {})
        if status.isdigit() and int(status) >= 400
    }
    assert {code.status for code in ErrorCode} <= documented
