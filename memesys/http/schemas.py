"""The API's shapes, defined once: pydantic models that validate what clients send, the shapes
of what the gateway serves, and the OpenAPI 3.1 document built from both (``/openapi.json``).

Requests are models (:class:`MemeRequestBase` and its configured subclass, :class:`PageQuery`,
:class:`CreateQuery`): the gateway validates with them and nothing else, and every constraint
they enforce is in the document they produce (lengths, ranges, the text and cursor patterns).
Responses are ``TypedDict`` shapes with ``extra="forbid"``: the document says exactly which
fields are served at every depth, and tests/test_schema.py checks real answers against it. They
are not validated when served: the hot path builds its dicts once (see :mod:`..pipeline.record`).

A route's entry in :data:`OPERATIONS` is its whole documentation (parameters, body, answers,
headers); adding a route to the document is adding one :class:`Operation` there.
"""

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict  # pydantic reads typing's only from Python 3.12

from memesys.domain.formats import CATALOGUE
from memesys.domain.ids import CURSOR_PATTERN, ID_PATTERN
from memesys.errors import ErrorCode

MAX_LABEL_CHARS = 100
MAX_SEED = 2**31 - 1
MAX_PAGE = 100
DEFAULT_PAGE = 20
MAX_JSON_DEPTH = 32  # arrays and objects inside each other; a meme request needs 1
MAX_SHOWN_CHARS = 32  # of a client's value quoted back in an error message
REF = "#/components/schemas/{model}"

# Characters no text field may hold: Unicode's control (Cc), format (Cf) and private-use (Co)
# characters, but for those Python counts as whitespace (a tab, a newline: collapsed to one
# space, as every run of whitespace is). Code point ranges, inclusive; tests/test_schema.py
# checks them against unicodedata. A lone surrogate (Cs) is no valid string at all.
_FORBIDDEN = (
    (0x0, 0x8), (0xE, 0x1B), (0x7F, 0x84), (0x86, 0x9F), (0xAD, 0xAD), (0x600, 0x605),
    (0x61C, 0x61C), (0x6DD, 0x6DD), (0x70F, 0x70F), (0x890, 0x891), (0x8E2, 0x8E2),
    (0x180E, 0x180E), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F),
    (0xE000, 0xF8FF), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD),
    (0x110CD, 0x110CD), (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001), (0xE0020, 0xE007F), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD),
)  # fmt: skip
# What Python's str.split() splits on (str.isspace()).
_BLANK = (
    (0x9, 0xD), (0x1C, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
    (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
)  # fmt: skip


def _chars(ranges: tuple[tuple[int, int], ...]) -> str:
    """A regex character class body of ``ranges``, as literal characters (every engine the
    document may meet, ECMA-262 with its "u" flag, Python's re and Rust's regex, reads them)."""
    return "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in ranges)


_F, _W = _chars(_FORBIDDEN), _chars(_BLANK)
TEXT_PATTERN = f"^[^{_F}]*$"
TOPIC_PATTERN = f"^[{_W}]*[^{_F}{_W}][^{_F}]*$"  # and at least one character not blank

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
_SHAPE = ConfigDict(extra="forbid")  # a response: every field declared

# -- requests -----------------------------------------------------------------------------------

FormatName = Literal.__getitem__(tuple(CATALOGUE))  # the catalogue's names, exactly

Label = Annotated[
    str,
    Field(
        max_length=MAX_LABEL_CHARS,
        pattern=TEXT_PATTERN,
        description="free text; no control, format or private-use characters; runs of "
        "whitespace become one space, and a blank value is the same as none",
    ),
]


def _integral(value: object) -> object:
    """A JSON number without a fractional part as an int: JSON Schema's "integer" is that
    (7.0 is one; true is not)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class MemeRequestBase(BaseModel):
    """What ``POST /v1/memes`` reads; the topic's limit is configured
    (:func:`meme_request`)."""

    model_config = _STRICT

    topic: str
    format: FormatName | None = Field(  # type: ignore[valid-type]
        None, description="a name from GET /v1/formats; none: the writer picks one"
    )
    style: Label | None = None
    audience: Label | None = None
    seed: Annotated[int, BeforeValidator(_integral)] = Field(
        0, ge=0, le=MAX_SEED, description="another seed, another meme"
    )
    fresh: bool = Field(False, description="make a new meme even if one is cached")


@functools.cache
def meme_request(max_topic_chars: int) -> type[MemeRequestBase]:
    """The request model of a gateway whose topics may have ``max_topic_chars`` characters."""

    class MemeRequest(MemeRequestBase):
        model_config = ConfigDict(
            json_schema_extra={
                "examples": [
                    {"topic": "mondays at the office"},
                    {"topic": "cats", "format": "drake", "style": "dry", "seed": 7},
                ]
            }
        )

        topic: str = Field(
            min_length=1,
            max_length=max_topic_chars,
            pattern=TOPIC_PATTERN,
            description="what the meme is about; no control, format or private-use "
            "characters, not blank; runs of whitespace become one space",
        )

    return MemeRequest


def _ascii_int(value: object) -> object:
    """A query's digits as an int (not int(): "²", "٣" and " 5" are no number in a URL)."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value):
        return int(value)
    return value


class PageQuery(BaseModel):
    """The query of ``GET /v1/memes``."""

    model_config = _STRICT

    limit: Annotated[int, BeforeValidator(_ascii_int)] = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(
        None,
        pattern=f"^{CURSOR_PATTERN}$",
        description="a page's next_cursor: <created_at>~<id> of the last meme seen",
        examples=["1765000000.123456~x3UqFv0bV1sXgW9a"],
    )


class CreateQuery(BaseModel):
    """The query of ``POST /v1/memes``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    run_async: Literal["true", "false", "1", "0"] = Field(
        "false",
        alias="async",
        description="true (or 1): answer 202 with a task once it is recorded",
    )

    @property
    def is_async(self) -> bool:
        return self.run_async in ("true", "1")


# -- responses ----------------------------------------------------------------------------------

Seconds = Annotated[float, Field(description="Unix time, seconds")]


class ImageRef(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$", description="also its ETag")]
    bytes: Annotated[int, Field(ge=0)]


class Scores(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    humor: Annotated[float, Field(ge=0, le=1)]
    clarity: Annotated[float, Field(ge=0, le=1)]
    creativity: Annotated[float, Field(ge=0, le=1)]
    shareability: Annotated[float, Field(ge=0, le=1)]
    overall: Annotated[float, Field(ge=0, le=1, description="the weighted mean, adjusted")]
    critique: str


VerdictStatus = Literal["passed", "failed", "unavailable"]


class Verdict(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    status: VerdictStatus
    confidence: Annotated[float, Field(ge=0, le=1)]
    reasons: list[str]


class Verification(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    verdicts: Annotated[dict[str, Verdict], Field(description="one per verifier, by name")]
    degraded: Annotated[list[str], Field(description="the verifiers whose verdict is unavailable")]


class Round(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    index: Annotated[int, Field(ge=1)]
    texts: list[str]
    overall: float
    verdicts: Annotated[dict[str, VerdictStatus], Field(description="each verifier's status")]
    gain: float
    refused: Annotated[
        str | None, Field(description="the refusal code, if its verdicts refused it")
    ]


class StageCall(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    provider: str
    model: str
    tokens: Annotated[int, Field(ge=0)]
    hedges: Annotated[int, Field(ge=0, description="hedged calls sent beside the first")]


class Program(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    hash: str
    path: Annotated[str, Field(description='its file, or "builtin"')]


class Provider(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    name: Annotated[str, Field(description="the provider of the call that wrote the texts")]
    model: str
    tokens: Annotated[int, Field(ge=0, description="of every stage call")]
    stages: Annotated[
        dict[str, StageCall],
        Field(description="select_write, or select and write, then the verifiers and score"),
    ]
    program: Program


def _example(*examples: dict[str, Any]) -> ConfigDict:
    """A response shape's config with its ``examples`` (tests/test_schema.py validates them)."""
    return ConfigDict(extra="forbid", json_schema_extra={"examples": list(examples)})


_CALL = {"provider": "offline", "model": "offline-writer-1", "tokens": 580, "hedges": 0}
MEME_EXAMPLE: dict[str, Any] = {
    "id": "IuvsMDOCEvDPLcmW",
    "topic": "mondays at the office",
    "format": "drake",
    "format_reason": "requested",
    "top_text": "Normal mondays at the office",
    "bottom_text": "Dry mondays at the office",
    "texts": {"reject": "Normal mondays at the office", "prefer": "Dry mondays at the office"},
    "style": "dry",
    "audience": None,
    "seed": 7,
    "image_url": "/v1/memes/IuvsMDOCEvDPLcmW/image.png",
    "image": {
        "sha256": "d8b0bd0647569f31224ef970abcacbaaf52b8f94c56c980ee1b9068296fa5f34",
        "bytes": 105978,
    },
    "scores": {
        "humor": 0.475,
        "clarity": 1.0,
        "creativity": 0.456,
        "shareability": 0.654,
        "overall": 0.63825,
        "critique": "Fix: add a twist (but, still, never); end on a punchline mark (! or ?).",
    },
    "verification": {
        "verdicts": {
            name: {"status": "passed", "confidence": 0.8, "reasons": []}
            for name in ("appropriateness", "factuality", "instruction_following")
        },
        "degraded": [],
    },
    "refinement": [],
    "refinement_skipped": None,
    "provider": {
        "name": "offline",
        "model": "offline-writer-1",
        "tokens": 2900,
        "stages": {
            name: _CALL
            for name in ("write", "appropriateness", "factuality", "instruction_following", "score")
        },
        "program": {"hash": "e41f01582cfdd592", "path": "builtin"},
    },
    "pipeline_mode": "parallel",
    "engine": "actors",
    "cached": False,
    "created_at": 1796537805.1142213,
    "timings": {"pipeline": 16.65, "render": 68.74, "store": 50.55, "total": 135.95},
    "trace_id": "1d57ede30aac4fee82619ba052941e91",
}


class Meme(TypedDict):
    __pydantic_config__ = _example(MEME_EXAMPLE)  # type: ignore[misc]
    id: Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
    topic: str
    format: Annotated[str, Field(description="its name in GET /v1/formats")]
    format_reason: Annotated[str, Field(description="why the writer chose the format")]
    top_text: Annotated[str, Field(description="the first slot's text")]
    bottom_text: Annotated[str, Field(description="the last slot's text")]
    texts: Annotated[dict[str, str], Field(description="every slot's text, by slot name")]
    style: str | None
    audience: str | None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]
    image_url: str
    image: NotRequired[
        Annotated[ImageRef, Field(description="the PNG (absent on memes stored before it)")]
    ]
    scores: Scores
    verification: Verification
    refinement: Annotated[list[Round], Field(description="one entry per refinement round")]
    refinement_skipped: Annotated[
        Literal["late", "llm_rate_limited"] | None,
        Field(description="why a round the score called for did not run"),
    ]
    provider: Provider
    pipeline_mode: Literal["parallel", "sequential"]
    engine: Annotated[Literal["actors", "inprocess"], Field(description="the engine that made it")]
    cached: Annotated[bool, Field(description="answered from the cache")]
    created_at: Seconds
    timings: Annotated[dict[str, float], Field(description="milliseconds, by stage and total")]
    trace_id: Annotated[str, Field(description="this answer's (a cached meme: the request's)")]


class MemePage(TypedDict):
    __pydantic_config__ = _example(  # type: ignore[misc]
        {"memes": [MEME_EXAMPLE], "next_cursor": "1796537805.1142213~IuvsMDOCEvDPLcmW"},
        {"memes": [], "next_cursor": None},
    )
    memes: Annotated[list[Meme], Field(description="newest first")]
    next_cursor: Annotated[
        str | None,
        Field(pattern=f"^{CURSOR_PATTERN}$", description="the next page's cursor; null: the end"),
    ]


class TaskAccepted(TypedDict):
    __pydantic_config__ = _example(  # type: ignore[misc]
        {"task_id": "cAJsztTDxDU0ClYG", "status_url": "/v1/tasks/cAJsztTDxDU0ClYG"}
    )
    task_id: Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
    status_url: str


class ErrorDetail(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    code: Annotated[
        Literal.__getitem__(tuple(ErrorCode)),  # type: ignore[valid-type]
        Field(
            description="; ".join(
                f"{c.value}: {c.status}{', retryable' if c.retryable else ''}" for c in ErrorCode
            )
        ),
    ]
    message: Annotated[
        str,
        Field(
            description="for people; never an actor address, a socket path or a Python type "
            f"name; quotes at most {MAX_SHOWN_CHARS} characters of what the client sent"
        ),
    ]
    field: NotRequired[Annotated[str, Field(description="the invalid field (invalid_field)")]]


class Error(TypedDict):
    __pydantic_config__ = _example(  # type: ignore[misc]
        {
            "error": {
                "code": ErrorCode.INVALID_FIELD,
                "message": f"seed: must be an integer between 0 and {MAX_SEED}",
                "field": "seed",
            }
        },
        {"error": {"code": ErrorCode.OVERLOADED, "message": ErrorCode.OVERLOADED.message}},
    )
    error: ErrorDetail


class Task(TypedDict):
    __pydantic_config__ = _example(  # type: ignore[misc]
        {
            "task_id": "cAJsztTDxDU0ClYG",
            "status": "running",
            "stage": "generating",
            "progress": 0.5,
            "created_at": 1796537805.11,
            "updated_at": 1796537805.12,
        },
        {
            "task_id": "cAJsztTDxDU0ClYG",
            "status": "succeeded",
            "stage": "done",
            "progress": 1.0,
            "created_at": 1796537805.11,
            "updated_at": 1796537806.02,
            "meme": MEME_EXAMPLE,
        },
    )
    task_id: Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
    status: Literal["queued", "running", "succeeded", "failed"]
    stage: Literal["queued", "generating", "done"]
    progress: Annotated[float, Field(ge=0, le=1)]
    created_at: Seconds
    updated_at: Seconds
    meme: NotRequired[Annotated[Meme, Field(description="once succeeded (not once erased)")]]
    error: NotRequired[Annotated[ErrorDetail, Field(description="once failed")]]


class Slot(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    name: str
    max_chars: Annotated[int, Field(ge=1)]
    hint: str


class Format(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    name: str
    title: str
    description: str
    layout: str
    slots: list[Slot]


class Formats(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    formats: list[Format]


class Health(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    status: Literal["ok"]


class Checks(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    actors: Annotated[str, Field(description='"ok", or why not')]
    store: Annotated[str, Field(description='"ok", "down: <reason>", or a contract error')]


class Subtree(TypedDict):
    """A part of the actor tree that does not run (the topmost one: what is under it is down
    with it)."""

    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    path: Annotated[str, Field(description='its path from the root, e.g. "memesys/generator"')]
    state: Annotated[str, Field(description="restarting, dead, starting, stopping or unresponsive")]
    reason: Annotated[str, Field(description='why it last exited abnormally ("" if unknown)')]


class Readiness(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    status: Literal["ready", "not_ready"]
    checks: Checks
    subtrees: Annotated[
        list[Subtree],
        Field(description="the parts of the tree that do not run; they leave the daemon ready"),
    ]


# -- the document -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One route's documentation. ``answers``: status -> (shape or None, description[, media
    type]); ``errors``: the statuses it may answer with the contract's error (every operation
    may also answer :data:`ANY`, and :data:`SHED` unless ``operations``); ``headers``: status
    -> the names of the :data:`HEADERS` it always sends."""

    method: str
    path: str
    summary: str
    answers: Mapping[int, tuple[Any, str] | tuple[Any, str, str]]
    errors: tuple[int, ...] = ()
    body: str | None = None  # "MemeRequest": the request model's component
    query: type[BaseModel] | None = None
    path_id: bool = False
    headers: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    extra_parameters: tuple[dict[str, Any], ...] = ()
    description: str = ""
    operations: bool = False  # never queued or shed: no 503 of admission control


# Answered by every route: a wrong method, a server fault; and but for the operations routes
# (/healthz, /readyz, /metrics: never queued or refused), the gateway's own shedding.
ANY = (405, 500)
SHED = 503
# Answered by every /v1/ route: a missing or forged token (gateway.auth = "required"), a client
# over gateway.client_rate_per_minute (memesys.http.auth, memesys.http.client_limits).
DOOR = (401, 429)

HEADERS: dict[str, dict[str, Any]] = {
    "Location": {
        "description": "the created resource (a meme, or a task)",
        "required": True,
        "schema": {"type": "string"},
    },
    "X-Trace-Id": {
        "description": "this request's trace id (the meme's trace_id)",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    },
    "ETag": {
        "description": "the PNG's SHA-256, quoted: a strong validator",
        "required": True,
        "schema": {"type": "string", "pattern": '^"[0-9a-f]{64}"$'},
    },
    "Cache-Control": {
        "description": "public, max-age=31536000, immutable",
        "required": True,
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "seconds to wait before retrying; for overloaded, computed from the "
        "gateway's queue (requests ahead x recent mean service time / slots)",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "Allow": {
        "description": "the methods this path allows",
        "required": True,
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {
        "description": "Bearer, with RFC 6750's error when a token was sent",
        "required": True,
        "schema": {"type": "string", "pattern": "^Bearer"},
    },
    "X-Meme-Id": {
        "description": "the new meme's id (an image/png answer)",
        "required": True,
        "schema": {"type": "string", "pattern": f"^{ID_PATTERN}$"},
    },
}
_ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{ID_PATTERN}$"},
}
_IMAGE = ("ETag", "Cache-Control")

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        "/v1/memes",
        "Make a meme and wait for it (or, with async=true, answer 202 with a task once it is "
        "durably recorded)",
        {
            201: (
                Meme,
                "the meme; its PNG for a client whose Accept ranks image/png first",
                "image/png",
            ),
            202: (TaskAccepted, "the task, recorded"),
        },
        (400, 406, 408, 413, 415, 422, 502, 504),
        body="MemeRequest",
        query=CreateQuery,
        headers={
            201: ("Location", "X-Trace-Id", "?X-Meme-Id", "?ETag"),
            202: ("Location", "X-Trace-Id"),
        },
        description="The body must be declared Content-Type: application/json (charset, if "
        "any, utf-8): any other type, and a body without one, is 415 (so a web page cannot "
        "make a local daemon generate memes). The body must arrive within the gateway's body "
        "timeout (408), be at most max_body_bytes (413) and be UTF-8 JSON nested at most "
        f"{MAX_JSON_DEPTH} deep (400). An Accept header that ranks image/png above "
        "application/json gets the new meme's PNG itself (201, with X-Meme-Id and ETag; 406 "
        "with async=true); errors stay JSON.",
    ),
    Operation(
        "get",
        "/v1/memes",
        "A page of memes, newest first",
        {200: (MemePage, "a page")},
        (422,),
        query=PageQuery,
    ),
    Operation("get", "/v1/memes/{id}", "One meme", {200: (Meme, "the meme")}, (404,), path_id=True),
    Operation(
        "delete",
        "/v1/memes/{id}",
        "Erase a meme, its image and cache entries",
        {204: (None, "erased")},
        (404,),
        path_id=True,
    ),
    Operation(
        "get",
        "/v1/memes/{id}/image.png",
        "The rendered PNG",
        {
            200: (None, "PNG; cacheable for a year (immutable)", "image/png"),
            304: (None, "the client's copy is current (If-None-Match)"),
        },
        (404,),
        path_id=True,
        headers={200: _IMAGE, 304: _IMAGE},
        extra_parameters=(
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "the ETag of a copy the client holds: 304 if current",
            },
        ),
    ),
    Operation(
        "get",
        "/v1/tasks/{id}",
        "An asynchronous task",
        {200: (Task, "the task")},
        (404,),
        path_id=True,
    ),
    Operation(
        "get",
        "/v1/formats",
        "The format catalogue",
        {200: (Formats, "formats with their slots and limits")},
    ),
    Operation("get", "/healthz", "Liveness", {200: (Health, "alive")}, operations=True),
    Operation(
        "get",
        "/readyz",
        "Readiness: actor tree up and store reachable",
        {200: (Readiness, "ready"), 503: (Readiness, "not ready")},
        operations=True,
    ),
    Operation(
        "get",
        "/metrics",
        "Prometheus metrics",
        {200: (None, "the text format 0.0.4", "text/plain")},
        (401,),  # gateway.auth = "required" asks Prometheus for a token too
        operations=True,
    ),
    Operation(
        "get",
        "/openapi.json",
        "This document",
        {200: ({"type": "object"}, "OpenAPI 3.1")},
    ),
    Operation("get", "/", "A page to make a meme", {200: (None, "HTML", "text/html")}),
)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _headers(names: tuple[str, ...]) -> dict[str, Any]:
    """The :data:`HEADERS` named; a name that starts with "?" is sent only sometimes."""
    return {
        name.lstrip("?"): {**HEADERS[name.lstrip("?")], "required": not name.startswith("?")}
        for name in names
    }


def _error(status: int) -> dict[str, Any]:
    """The error answer of ``status``: it lists the codes answered with it."""
    codes = [c for c in ErrorCode if c.status == status]
    answer = _json({"$ref": REF.format(model="Error")}, "error: " + ", ".join(codes))
    if any(c.retryable and c.retry_after is not None for c in codes):
        answer["headers"] = _headers(("Retry-After",))
    if status == 405:
        answer["headers"] = _headers(("Allow",))
    if status == 401:
        answer["headers"] = _headers(("WWW-Authenticate",))
    return answer


class _Components:
    """The shapes' JSON Schemas, each once under components/schemas."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, shape: Any, mode: Literal["validation", "serialization"]) -> dict[str, Any]:
        adapter = TypeAdapter(shape)
        schema = adapter.json_schema(ref_template=REF, mode=mode)
        self.schemas.update(schema.pop("$defs", {}))
        name = schema.get("title") or shape.__name__
        self.schemas[name] = schema
        return {"$ref": REF.format(model=name)}


def _parameters(query: type[BaseModel], components: _Components) -> list[dict[str, Any]]:
    schema = query.model_json_schema(ref_template=REF, by_alias=True)
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {k: v for k, v in spec.items() if k not in ("title", "description")},
            **({"description": spec["description"]} if "description" in spec else {}),
        }
        for name, spec in schema["properties"].items()
    ]


def _operation(op: Operation, components: _Components, request: type[BaseModel]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, (shape, description, *media) in op.answers.items():
        answer: dict[str, Any] = {"description": description}
        if shape is not None:
            schema = shape if isinstance(shape, dict) else components.ref(shape, "serialization")
            answer["content"] = {"application/json": {"schema": schema}}
        if media:
            answer["content"] = {**answer.get("content", {}), **{m: {} for m in media}}
        if status in op.headers:
            answer["headers"] = _headers(op.headers[status])
        responses[str(status)] = answer
    door = DOOR if op.path.startswith("/v1/") else ()
    for status in sorted({*op.errors, *door, *ANY, *(() if op.operations else (SHED,))}):
        responses.setdefault(str(status), _error(status))
    out: dict[str, Any] = {"summary": op.summary, "responses": responses}
    if op.description:
        out["description"] = op.description
    parameters = [*([_ID_PARAMETER] if op.path_id else []), *op.extra_parameters]
    if op.query is not None:
        parameters += _parameters(op.query, components)
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": components.ref(request, "validation")}},
        }
    return out


def openapi_document(max_topic_chars: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a gateway whose topics may have ``max_topic_chars``
    characters: built from :data:`OPERATIONS` and the models, so it cannot drift from them."""
    components = _Components()
    request = meme_request(max_topic_chars)
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, components, request)
    components.ref(Error, "serialization")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "memesys",
            "version": "0.1.0",
            "description": "A fault-tolerant meme-generation daemon.",
        },
        "paths": paths,
        "components": {"schemas": dict(sorted(components.schemas.items()))},
    }
