"""The API's shapes, defined once: pydantic models that validate what clients send, the shapes
of what the gateway serves, and the OpenAPI 3.1 document built from both (``/openapi.json``).

Requests are models (:class:`MemeRequestBase` and its configured subclass, :class:`PageQuery`,
:class:`CreateQuery`): the gateway validates with them and nothing else, and every constraint
they enforce is in the document they produce (lengths, ranges, the text and cursor patterns).
Responses are ``TypedDict`` shapes with ``extra="forbid"``: the document says exactly which
fields are served at every depth, and tests/test_schema.py checks real answers against it. They
are not validated when served: the hot path builds its dicts once (see :mod:`..pipeline.record`).

A task's event stream is declared one message at a time (``TaskEvent``: its ``data`` is JSON
of its event type's own shape), as OpenAPI 3.2's ``itemSchema`` does and as schemathesis reads
a 3.1 document's ``text/event-stream`` schema, so both the schema test and the fuzzer check
every message served.

A route's entry in :data:`OPERATIONS` is its whole documentation (parameters, body, answers,
headers, links); adding a route to the document is adding one :class:`Operation` there.
"""

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict  # pydantic reads typing's only from Python 3.12

from memesys.domain import events
from memesys.domain.formats import CATALOGUE
from memesys.domain.ids import CURSOR_PATTERN, ID_PATTERN
from memesys.domain.progress import CANCELLED, COMPLETED, EVENT_ID_PATTERN, FAILED
from memesys.errors import ErrorCode
from memesys.http import assets

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


# A task's stage: "queued"; while it runs, the last stage its meme reached; "done" once finished.
TaskStage = Literal.__getitem__(("queued", *events.STAGE_PROGRESS, "done"))
_STAGES = ", ".join(f"{stage} {progress}" for stage, progress in events.STAGE_PROGRESS.items())


class Task(TypedDict):
    __pydantic_config__ = _example(  # type: ignore[misc]
        {
            "task_id": "cAJsztTDxDU0ClYG",
            "status": "running",
            "stage": events.CAPTION_WRITTEN,
            "progress": events.STAGE_PROGRESS[events.CAPTION_WRITTEN],
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
        {
            "task_id": "cAJsztTDxDU0ClYG",
            "status": "cancelled",
            "stage": "done",
            "progress": 1.0,
            "created_at": 1796537805.11,
            "updated_at": 1796537805.47,
        },
    )
    task_id: Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: Annotated[
        TaskStage,  # type: ignore[valid-type]
        Field(
            description="queued; while it runs, the last stage its meme reached (started "
            "before the first); done once it has succeeded, failed or been cancelled"
        ),
    ]
    progress: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description=f"queued: 0; while it runs, the furthest stage's ({_STAGES}: a "
            "refinement's second round of verdicts does not take it back); finished: 1.0",
        ),
    ]
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
    projections: Annotated[
        str,
        Field(
            description='"ok": the memes, listings, cache and tasks hold the event log; "catching '
            'up with the event log" (they were lost; the projector replays it), or "unknown" '
            "while the store does not answer"
        ),
    ]


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


# -- a task's event stream: each event type's data ---------------------------------------------

RoundIndex = Annotated[
    int, Field(ge=0, description="0: the first caption; n: the n-th refinement's")
]
Texts = Annotated[
    dict[str, str] | None,
    Field(description="the caption's texts by slot name; null once the meme is erased"),
]
Score = Annotated[float, Field(ge=0, le=1)]


class EventEmpty(TypedDict):
    """The data of task_queued, task_running and cancelled."""

    __pydantic_config__ = _SHAPE  # type: ignore[misc]


class EventFormatChosen(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    format: Annotated[str, Field(description="its name in GET /v1/formats")]


class EventCaptionWritten(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    format: str
    texts: Texts


class EventVerdict(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    round: RoundIndex
    verifier: str
    status: VerdictStatus
    confidence: Score
    reasons: Annotated[list[str] | None, Field(description="null once the meme is erased")]


class EventScores(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    humor: Score
    clarity: Score
    creativity: Score
    shareability: Score


class EventScored(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    round: RoundIndex
    overall: Score
    scores: EventScores


class EventRefined(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    round: Annotated[int, Field(ge=1)]
    texts: Texts


class EventRendered(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    bytes: Annotated[int, Field(ge=0, description="the PNG's size")]


class EventCompleted(TypedDict):
    __pydantic_config__ = _SHAPE  # type: ignore[misc]
    meme: Annotated[
        Meme | None,
        Field(description="as GET /v1/memes/{id} serves it; null once the meme is erased"),
    ]


# Each event type of GET /v1/tasks/{id}/events, in the order they happen, and its data.
EVENTS: dict[str, Any] = {
    events.TASK_QUEUED: EventEmpty,
    events.TASK_RUNNING: EventEmpty,
    events.FORMAT_CHOSEN: EventFormatChosen,
    events.CAPTION_WRITTEN: EventCaptionWritten,
    events.VERDICT: EventVerdict,
    events.SCORED: EventScored,
    events.REFINED: EventRefined,
    events.RENDERED: EventRendered,
    COMPLETED: EventCompleted,
    FAILED: ErrorDetail,  # the task's error, as GET /v1/tasks/{id} shows it
    CANCELLED: EventEmpty,
}


# -- the document -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One route's documentation. ``answers``: status -> (shape or None, description, media
    types other than JSON...); ``errors``: the statuses it may answer with the contract's
    error (every operation may also answer :data:`ANY`, and :data:`SHED` if ``admitted``);
    ``headers``: status -> the names of the :data:`HEADERS` it sends ("?name": sometimes);
    ``events``: an event stream's message component name and its event types -> the shape of
    each one's data; ``links``: status -> the operations its answer's body names (OpenAPI
    links, by name)."""

    id: str  # its operationId
    method: str
    path: str
    summary: str
    answers: Mapping[int, tuple[Any, str, *tuple[str, ...]]]
    errors: tuple[int, ...] = ()
    body: str | None = None  # "MemeRequest": the request model's component
    query: type[BaseModel] | None = None
    path_id: bool = False
    headers: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    extra_parameters: tuple[dict[str, Any], ...] = ()
    description: str = ""
    admitted: bool = True  # False: never queued or refused by admission control
    events: tuple[str, Mapping[str, Any]] | None = None
    links: Mapping[int, Mapping[str, dict[str, Any]]] = field(default_factory=dict)


# Answered by every route: a wrong method, a server fault; and by every route admission control
# admits (all but /healthz, /readyz, /metrics and event streams), the gateway's own shedding.
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
        "description": "the body's SHA-256, quoted: a strong validator (a PNG's is its "
        "image.sha256); If-None-Match with it: 304",
        "required": True,
        "schema": {"type": "string", "pattern": '^"[0-9a-f]{64}"$'},
    },
    "Cache-Control": {
        "description": "an image: public, max-age=31536000, immutable (its URL names one "
        "picture forever); the page and its files: no-cache (kept, and revalidated by ETag "
        "at each use); an event stream: no-store",
        "required": True,
        "schema": {
            "type": "string",
            "enum": ["public, max-age=31536000, immutable", "no-cache", "no-store"],
        },
    },
    "Content-Security-Policy": {
        "description": "the page's: nothing inline, nothing from elsewhere, never framed "
        "(default-src 'self', frame-ancestors 'none')",
        "required": True,
        "schema": {"type": "string", "pattern": "^default-src 'self';.*frame-ancestors 'none'"},
    },
    "X-Frame-Options": {
        "description": "no other site may frame the page",
        "required": True,
        "schema": {"type": "string", "const": "DENY"},
    },
    "X-Content-Type-Options": {
        "description": "the declared media type is the only one",
        "required": True,
        "schema": {"type": "string", "const": "nosniff"},
    },
    "Referrer-Policy": {
        "description": "the page's address is sent nowhere",
        "required": True,
        "schema": {"type": "string", "const": "no-referrer"},
    },
    "X-Accel-Buffering": {
        "description": "a proxy (nginx) passes each message on at once",
        "required": True,
        "schema": {"type": "string", "const": "no"},
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
_TASK_LINKS = {
    name: {"operationId": operation, "parameters": {"id": "$response.body#/task_id"}}
    for name, operation in (
        ("task", "getTask"),
        ("events", "getTaskEvents"),
        ("cancel", "cancelTask"),
    )
}
_PAGE = (
    "ETag",
    "Cache-Control",
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "Referrer-Policy",
)
_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "the ETag of a copy the client holds: 304 if current",
}
_EVENT_ID = {"type": "string", "pattern": f"^{EVENT_ID_PATTERN}$"}
# The page's files but the page itself (served at /), and their media types.
STATIC = {name: assets.media_type(name) for name in assets.files() if name != assets.INDEX}
EVENT_STREAM = "text/event-stream"
EVENT_STREAM_DESCRIPTION = f"""\
Server-Sent Events, one message per event of the task and of its meme, as they happen: \
`id: <n>` (the message's position in the task's stream: 1, 2, ...), `event: <type>`, `data: \
<one-line JSON object>`, then a blank line. The types, in order: \
{events.TASK_QUEUED}, {events.TASK_RUNNING} (again when the task is queued again, e.g. behind \
the provider's schedule), the meme's stages {events.FORMAT_CHOSEN}, {events.CAPTION_WRITTEN}, \
{events.VERDICT} (one per verifier and round), {events.SCORED}, {events.REFINED} (a round of \
refinement), {events.RENDERED}; last {COMPLETED} (the meme, as GET /v1/memes/{{id}} serves \
it), {FAILED} (the task's error, as GET /v1/tasks/{{id}} shows it) or {CANCELLED}, after which \
the server ends the stream. The 200 answer's schema is one message's (TaskEvent: its `data`, \
JSON, has each type's own schema); texts and reasons are personal: null once the meme is \
erased.

A client that comes late gets the whole history at once, then the end. `Last-Event-ID: n` \
(or `?last_event_id=n`; the header wins, but each one sent must be an event id) resumes with \
exactly the messages after the n-th. While the task waits, a `: keep-alive` comment every \
gateway.event_keepalive_s. Bounded: at most gateway.max_event_streams streams at once, past \
it 503 `overloaded` (streams are never queued, nor counted against gateway.max_in_flight); \
each is open at most gateway.event_stream_max_s, and every stream ends when the daemon stops: \
the client resumes with Last-Event-ID. 503 `unavailable`: this gateway reads no event log."""

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "createMeme",
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
        links={202: _TASK_LINKS},
        description="The body must be declared Content-Type: application/json (charset, if "
        "any, utf-8): any other type, and a body without one, is 415 (so a web page cannot "
        "make a local daemon generate memes). The body must arrive within the gateway's body "
        "timeout (408), be at most max_body_bytes (413) and be UTF-8 JSON nested at most "
        f"{MAX_JSON_DEPTH} deep (400). An Accept header that ranks image/png above "
        "application/json gets the new meme's PNG itself (201, with X-Meme-Id and ETag; 406 "
        "with async=true); errors stay JSON.",
    ),
    Operation(
        "listMemes",
        "get",
        "/v1/memes",
        "A page of memes, newest first",
        {200: (MemePage, "a page")},
        (422,),
        query=PageQuery,
    ),
    Operation(
        "getMeme",
        "get",
        "/v1/memes/{id}",
        "One meme",
        {200: (Meme, "the meme")},
        (404,),
        path_id=True,
    ),
    Operation(
        "deleteMeme",
        "delete",
        "/v1/memes/{id}",
        "Erase a meme, its image and cache entries",
        {204: (None, "erased")},
        (404,),
        path_id=True,
    ),
    Operation(
        "getImage",
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
        extra_parameters=(_IF_NONE_MATCH,),
    ),
    Operation(
        "getTask",
        "get",
        "/v1/tasks/{id}",
        "An asynchronous task",
        {200: (Task, "the task")},
        (404,),
        path_id=True,
    ),
    Operation(
        "cancelTask",
        "delete",
        "/v1/tasks/{id}",
        "Cancel a queued or running task",
        {
            202: (
                Task,
                "the task, cancelled, once its meme's work has stopped (no provider call is "
                "made for it after this answer); it stays readable",
            )
        },
        (404, 409),
        path_id=True,
    ),
    Operation(
        "getTaskEvents",
        "get",
        "/v1/tasks/{id}/events",
        "A task's progress as it happens (Server-Sent Events)",
        {200: (None, "the task's messages, then the end", EVENT_STREAM)},
        (404, 422, 503),
        path_id=True,
        headers={200: ("Cache-Control", "X-Accel-Buffering")},
        extra_parameters=(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": _EVENT_ID,
                "description": "resume after the n-th message (0: from the start); anything "
                "but 1 to 7 digits: 422",
            },
            {
                "name": "last_event_id",
                "in": "query",
                "required": False,
                "schema": _EVENT_ID,
                "description": "as Last-Event-ID, which wins when both are sent (each one "
                "sent must be valid)",
            },
        ),
        description=EVENT_STREAM_DESCRIPTION,
        admitted=False,
        events=("TaskEvent", EVENTS),
    ),
    Operation(
        "listFormats",
        "get",
        "/v1/formats",
        "The format catalogue",
        {200: (Formats, "formats with their slots and limits")},
    ),
    Operation("healthz", "get", "/healthz", "Liveness", {200: (Health, "alive")}, admitted=False),
    Operation(
        "readyz",
        "get",
        "/readyz",
        "Readiness: actor tree up and store reachable",
        {200: (Readiness, "ready"), 503: (Readiness, "not ready")},
        admitted=False,
    ),
    Operation(
        "metrics",
        "get",
        "/metrics",
        "Prometheus metrics",
        {200: (None, "the text format 0.0.4", "text/plain")},
        (401,),  # gateway.auth = "required" asks Prometheus for a token too
        headers={200: ("X-Content-Type-Options",)},
        admitted=False,
    ),
    Operation(
        "openapi",
        "get",
        "/openapi.json",
        "This document",
        {200: ({"type": "object"}, "OpenAPI 3.1")},
    ),
    Operation(
        "getPage",
        "get",
        "/",
        "A page to make a meme",
        {
            200: (None, "HTML; its script and style are files under /static/", "text/html"),
            304: (None, "the client's copy is current (If-None-Match)"),
        },
        headers={200: _PAGE, 304: _PAGE},
        extra_parameters=(_IF_NONE_MATCH,),
    ),
    Operation(
        "getPageFile",
        "get",
        "/static/{name}",
        "A file of the page",
        {
            200: (None, "the file", *sorted(set(STATIC.values()))),
            304: (None, "the client's copy is current (If-None-Match)"),
        },
        (404,),
        headers={200: _PAGE, 304: _PAGE},
        extra_parameters=(
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "enum": list(STATIC)},
                "description": "; ".join(f"{name}: {media}" for name, media in STATIC.items())
                + "; any other name: 404",
            },
            _IF_NONE_MATCH,
        ),
    ),
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


def _message(name: str, kinds: Mapping[str, Any], components: _Components) -> dict[str, Any]:
    """One message of an event stream whose event types are ``kinds`` (type -> the shape of
    its data), as a component: the fields ``id``, ``event`` and ``data`` (JSON, the type's
    shape), each event type one branch. Per message, as OpenAPI 3.2's ``itemSchema`` and as
    schemathesis reads a 3.1 document."""
    branches = [
        {
            "type": "object",
            "properties": {
                "id": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                "event": {"const": kind},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": components.ref(shape, "serialization"),
                },
            },
            "required": ["id", "event", "data"],
            "additionalProperties": False,
        }
        for kind, shape in kinds.items()
    ]
    components.schemas[name] = {
        "title": name,
        "description": "one message: its id (its position, 1, 2, ...), its event type, and "
        "its data (one line of JSON): each event type's data has a schema of its own",
        "oneOf": branches,
    }
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
        if op.events is not None and EVENT_STREAM in media:
            name, kinds = op.events
            answer["content"][EVENT_STREAM] = {"schema": _message(name, kinds, components)}
        if status in op.headers:
            answer["headers"] = _headers(op.headers[status])
        if status in op.links:
            answer["links"] = dict(op.links[status])
        responses[str(status)] = answer
    door = DOOR if op.path.startswith("/v1/") else ()
    for status in sorted({*op.errors, *door, *ANY, *((SHED,) if op.admitted else ())}):
        responses.setdefault(str(status), _error(status))
    out: dict[str, Any] = {"operationId": op.id, "summary": op.summary, "responses": responses}
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
