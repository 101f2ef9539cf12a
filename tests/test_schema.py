"""The schema is the truth: every shape the real daemon serves, checked against the document
it serves at /openapi.json (JSON Schema 2020-12, every object closed: no undeclared field), and
the document checked against the gateway's routes and OpenAPI 3.1 itself."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from memesys.domain.events import TASK_QUEUED, TASK_RUNNING
from memesys.domain.progress import ENDS
from memesys.http import schemas
from memesys.http.app import Gateway
from memesys.http.page import Page
from memesys.http.schemas import openapi_document
from memesys.storage.progress import MEME_SHOWN
from tests.support.daemon import DaemonProcess, wait_task
from tests.support.gateway import GATEWAY, FakeDirectory

DOCUMENT = openapi_document(GATEWAY.max_topic_chars)


# -- the document --------------------------------------------------------------------------------


def test_the_document_is_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1")
    validate_openapi(DOCUMENT)


def test_the_document_declares_exactly_the_gateways_routes() -> None:
    """One entry in schemas.OPERATIONS per route of Gateway.app() (aiohttp's HEAD aside)."""
    app = Gateway(GATEWAY, FakeDirectory()).app()
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(m, p) for p, ops in DOCUMENT["paths"].items() for m in ops}
    assert served == documented


def event_data(document: dict) -> dict[str, dict]:
    """Each event type of a task's stream -> the schema of its data (a branch of TaskEvent)."""
    stream = document["paths"]["/v1/tasks/{id}/events"]["get"]["responses"]["200"]["content"]
    assert stream["text/event-stream"]["schema"] == {"$ref": "#/components/schemas/TaskEvent"}
    return {
        branch["properties"]["event"]["const"]: branch["properties"]["data"]["contentSchema"]
        for branch in document["components"]["schemas"]["TaskEvent"]["oneOf"]
    }


def test_the_stream_declares_the_data_of_every_event_type_it_sends() -> None:
    """A schema for each type the log's reader and the gateway send, and no other."""
    declared = event_data(DOCUMENT)
    assert set(declared) == {TASK_QUEUED, TASK_RUNNING, *MEME_SHOWN, *ENDS}
    names = {ref["$ref"].removeprefix("#/components/schemas/") for ref in declared.values()}
    assert names <= set(DOCUMENT["components"]["schemas"])


def test_the_static_names_are_exactly_the_files_served_there() -> None:
    name = DOCUMENT["paths"]["/static/{name}"]["get"]["parameters"][0]
    assert name["in"] == "path" and name["name"] == "name"
    assert set(name["schema"]["enum"]) == set(Page().assets) - {"index.html"}


def _objects(schema: Any) -> Iterator[dict]:
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            yield schema
        for value in schema.values():
            yield from _objects(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _objects(value)


def test_every_object_of_the_document_is_closed_or_a_typed_map() -> None:
    objects = list(_objects(DOCUMENT["components"]))
    assert len(objects) > 20
    for schema in objects:
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, schema
        else:  # a map: its values have a declared shape
            assert isinstance(schema.get("additionalProperties"), dict), schema


def test_every_example_of_the_document_is_valid() -> None:
    components = DOCUMENT["components"]
    examples = [
        (name, example)
        for name, schema in components["schemas"].items()
        for example in schema.get("examples", [])
    ]
    assert {"Meme", "MemePage", "MemeRequest", "Task", "TaskAccepted", "Error"} <= {
        name for name, _ in examples
    }
    for name, example in examples:
        schema = {"$ref": f"#/components/schemas/{name}", "components": components}
        errors = list(Draft202012Validator(schema).iter_errors(example))
        assert not errors, (name, [e.message for e in errors])


def test_the_text_ranges_are_unicodes() -> None:
    """The forbidden and blank characters of the text patterns, as this Python's unicodedata
    says (a new Unicode version changes them: regenerate the ranges)."""
    forbidden = [
        c
        for c in range(0x110000)
        if unicodedata.category(chr(c)) in ("Cc", "Cf", "Co") and not chr(c).isspace()
    ]
    blank = [c for c in range(0x110000) if chr(c).isspace()]

    def expand(ranges: tuple[tuple[int, int], ...]) -> list[int]:
        return [c for a, b in ranges for c in range(a, b + 1)]

    assert expand(schemas._FORBIDDEN) == forbidden
    assert expand(schemas._BLANK) == blank


# -- what the daemon serves ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """Half its memes made in process (ab_split): both engines' memes are checked."""
    d = DaemonProcess(
        tmp_path_factory.mktemp("daemon"), extra_env={"MEMESYS_SYSTEM_AB_SPLIT": "0.5"}
    ).start()
    yield d
    assert d.stop() == [], "processes left after the daemon stopped"


@pytest.fixture(scope="module")
def served(daemon) -> dict[str, Any]:
    status, document = daemon.json("GET", "/openapi.json")
    assert status == 200
    assert document == json.loads(json.dumps(openapi_document(GATEWAY.max_topic_chars)))
    return document


def conforms(
    document: dict,
    answer: tuple[int, dict, bytes],
    path: str,
    method: str,
    media: str = "application/json",
) -> Any:
    """``answer`` (status, headers, body) is one the document declares for ``method`` on
    ``path``: its status, its media type, its required headers and, for JSON, its body against
    the declared schema. Returns the decoded body."""
    status, headers, raw = answer
    operations = document["paths"][path]
    operation = operations.get(method) or next(iter(operations.values()))  # 405: any of them
    declared = operation["responses"].get(str(status))
    assert declared is not None, f"{method} {path}: {status} is not declared: {raw[:300]!r}"
    lower = {k.lower(): v for k, v in headers.items()}
    for name, header in declared.get("headers", {}).items():
        if header.get("required"):
            assert name.lower() in lower, f"{method} {path} {status}: no {name} header"
            value: Any = lower[name.lower()]
            if header["schema"].get("type") == "integer":
                value = int(value)
            assert not list(Draft202012Validator(header["schema"]).iter_errors(value)), (
                name,
                value,
            )
    if "content" not in declared:
        assert raw == b"", raw[:200]
        return None
    assert lower["content-type"].split(";")[0] == media and media in declared["content"]
    if media != "application/json":
        return raw
    body = json.loads(raw)
    schema = {**declared["content"][media]["schema"], "components": document["components"]}
    errors = sorted(Draft202012Validator(schema).iter_errors(body), key=str)
    assert not errors, f"{method} {path} {status}: " + "\n".join(
        f"{list(e.absolute_path)}: {e.message}" for e in errors[:10]
    )
    return body


@pytest.mark.slow
@pytest.mark.store
def test_both_engines_memes_are_the_documents(daemon, served) -> None:
    engines = {
        conforms(
            served,
            daemon.request("POST", "/v1/memes", {"topic": f"engine {n}", "fresh": True}),
            "/v1/memes",
            "post",
        )["engine"]
        for n in range(2)
    }
    assert engines == {"actors", "inprocess"}


@pytest.mark.slow
@pytest.mark.store
def test_every_served_shape_is_the_documents(daemon, served) -> None:
    doc = served
    # a meme made now, and the same request again: the cached answer
    made = conforms(
        doc,
        daemon.request("POST", "/v1/memes", {"topic": "schema truth", "seed": 5}),
        "/v1/memes",
        "post",
    )
    assert made["cached"] is False and made["style"] is None
    again = conforms(
        doc,
        daemon.request("POST", "/v1/memes", {"topic": "schema truth", "seed": 5}),
        "/v1/memes",
        "post",
    )
    assert again["cached"] is True and again["id"] == made["id"]
    styled = conforms(
        doc,
        daemon.request(
            "POST",
            "/v1/memes",
            {"topic": "  schema\ttruth ", "style": "dry\nwit", "audience": None, "format": "drake"},
        ),
        "/v1/memes",
        "post",
    )
    assert (styled["topic"], styled["style"], styled["format"]) == (
        "schema truth",
        "dry wit",
        "drake",
    )
    meme_id = made["id"]
    assert (
        conforms(doc, daemon.request("GET", f"/v1/memes/{meme_id}"), "/v1/memes/{id}", "get")["id"]
        == meme_id
    )
    # a page, and the next by its cursor
    first = conforms(doc, daemon.request("GET", "/v1/memes?limit=1"), "/v1/memes", "get")
    assert first["next_cursor"]
    second = conforms(
        doc,
        daemon.request("GET", f"/v1/memes?limit=1&cursor={first['next_cursor']}"),
        "/v1/memes",
        "get",
    )
    assert second["memes"] and second["memes"][0]["id"] != first["memes"][0]["id"]
    # a task, its record and its meme; a task that failed
    accepted = conforms(
        doc,
        daemon.request("POST", "/v1/memes?async=true", {"topic": "schema tasks", "fresh": True}),
        "/v1/memes",
        "post",
    )
    wait_task(daemon, accepted["task_id"])
    task = conforms(doc, daemon.request("GET", accepted["status_url"]), "/v1/tasks/{id}", "get")
    assert task["status"] == "succeeded" and task["meme"]["topic"] == "schema tasks"
    refused = conforms(
        doc,
        daemon.request("POST", "/v1/memes?async=1", {"topic": "how to stab my neighbour"}),
        "/v1/memes",
        "post",
    )
    wait_task(daemon, refused["task_id"])
    failed = conforms(doc, daemon.request("GET", refused["status_url"]), "/v1/tasks/{id}", "get")
    assert failed["status"] == "failed" and failed["error"]["code"] == "inappropriate"
    # the image, and the client's copy current
    image = "/v1/memes/{id}/image.png"
    png = conforms(
        doc, daemon.request("GET", f"/v1/memes/{meme_id}/image.png"), image, "get", "image/png"
    )
    assert png.startswith(b"\x89PNG")
    etag = f'"{made["image"]["sha256"]}"'
    conforms(
        doc,
        daemon.request("GET", f"/v1/memes/{meme_id}/image.png", headers={"If-None-Match": etag}),
        image,
        "get",
    )
    # a new meme's PNG itself, for a client that asks for it
    png = conforms(
        doc,
        daemon.request(
            "POST", "/v1/memes", {"topic": "schema png"}, headers={"Accept": "image/png"}
        ),
        "/v1/memes",
        "post",
        "image/png",
    )
    assert png.startswith(b"\x89PNG")
    # the catalogue and the operations routes
    conforms(doc, daemon.request("GET", "/v1/formats"), "/v1/formats", "get")
    conforms(doc, daemon.request("GET", "/healthz"), "/healthz", "get")
    conforms(doc, daemon.request("GET", "/readyz"), "/readyz", "get")
    conforms(doc, daemon.request("GET", "/openapi.json"), "/openapi.json", "get")
    conforms(doc, daemon.request("GET", "/metrics"), "/metrics", "get", "text/plain")
    page = daemon.request("GET", "/")
    conforms(doc, page, "/", "get", "text/html")
    conforms(
        doc, daemon.request("GET", "/", headers={"If-None-Match": page[1]["ETag"]}), "/", "get"
    )
    # erased: gone
    conforms(doc, daemon.request("DELETE", f"/v1/memes/{meme_id}"), "/v1/memes/{id}", "delete")
    gone = conforms(doc, daemon.request("GET", f"/v1/memes/{meme_id}"), "/v1/memes/{id}", "get")
    assert gone["error"]["code"] == "not_found"


def messages(raw: bytes) -> list[dict[str, str]]:
    """A whole event stream's messages, each its fields as sent (keep-alive comments aside)."""
    blocks = raw.decode().split("\n\n")
    assert blocks[-1] == "", "the stream ends after a whole message"
    found = [
        dict(line.split(": ", 1) for line in block.splitlines() if line[0] != ":")
        for block in blocks[:-1]
    ]
    return [message for message in found if message]


def stream_conforms(document: dict, daemon: DaemonProcess, task_id: str) -> list[str]:
    """The whole stream of a finished task is the document's: its answer, each message a
    TaskEvent, and its data the schema of its type. Returns the types, in order."""
    answer = daemon.request("GET", f"/v1/tasks/{task_id}/events")
    raw = conforms(document, answer, "/v1/tasks/{id}/events", "get", "text/event-stream")
    shown = messages(raw)
    assert [m["id"] for m in shown] == [str(n) for n in range(1, len(shown) + 1)]
    message = {"$ref": "#/components/schemas/TaskEvent", "components": document["components"]}
    declared = event_data(document)
    for m in shown:
        problems = [e.message for e in Draft202012Validator(message).iter_errors(m)]
        assert not problems, (m, problems[:3])
        schema = {**declared[m["event"]], "components": document["components"]}
        errors = sorted(Draft202012Validator(schema).iter_errors(json.loads(m["data"])), key=str)
        assert not errors, f"message {m['id']} ({m['event']}): " + "\n".join(
            f"{list(e.absolute_path)}: {e.message}" for e in errors[:10]
        )
    return [m["event"] for m in shown]


def cancelled_task(document: dict, daemon: DaemonProcess) -> dict:
    """A task cancelled while its meme is made. The cancel races the offline writer (a meme in
    a fraction of a second): each try's answer is the document's, a 202 or, when the meme won,
    a 409; tried until a cancel wins."""
    for n in range(10):
        status, accepted = daemon.json(
            "POST", "/v1/memes?async=true", {"topic": f"schema cancel {n}", "fresh": True}
        )
        assert status == 202, accepted
        answer = daemon.request("DELETE", accepted["status_url"])
        body = conforms(document, answer, "/v1/tasks/{id}", "delete")
        if answer[0] == 202:
            return body
        assert body["error"]["code"] == "task_finished", body
    pytest.fail("no cancel of 10 won its race with the offline writer")


@pytest.mark.slow
@pytest.mark.store
def test_the_task_routes_answers_are_the_documents(daemon, served) -> None:
    doc = served
    # a task that succeeded: its whole story; it cannot be cancelled any more
    made = daemon.json("POST", "/v1/memes?async=true", {"topic": "schema stream", "fresh": True})
    task_id = made[1]["task_id"]
    assert wait_task(daemon, task_id)["status"] == "succeeded"
    types = stream_conforms(doc, daemon, task_id)
    assert types[:2] == [TASK_QUEUED, TASK_RUNNING] and types[-1] == "completed", types
    assert {"format_chosen", "caption_written", "verdict", "scored", "rendered"} <= set(types)
    finished = conforms(
        doc, daemon.request("DELETE", f"/v1/tasks/{task_id}"), "/v1/tasks/{id}", "delete"
    )
    assert finished["error"]["code"] == "task_finished"
    # a task refused: its stream ends with the task's error
    status, refused = daemon.json(
        "POST", "/v1/memes?async=1", {"topic": "how to stab my neighbour"}
    )
    assert status == 202
    assert wait_task(daemon, refused["task_id"])["status"] == "failed"
    assert stream_conforms(doc, daemon, refused["task_id"])[-1] == "failed"
    # a task cancelled: 202 with it, readable, its stream ends with cancelled
    cancelled = cancelled_task(doc, daemon)
    assert (cancelled["status"], cancelled["stage"], cancelled["progress"]) == (
        "cancelled",
        "done",
        1.0,
    )
    task = conforms(
        doc, daemon.request("GET", f"/v1/tasks/{cancelled['task_id']}"), "/v1/tasks/{id}", "get"
    )
    assert task["status"] == "cancelled"
    assert stream_conforms(doc, daemon, cancelled["task_id"])[-1] == "cancelled"
    # resumed after the first message: the rest
    resumed = daemon.request("GET", f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "1"})
    rest = conforms(doc, resumed, "/v1/tasks/{id}/events", "get", "text/event-stream")
    assert [m["event"] for m in messages(rest)] == types[1:]


@pytest.mark.slow
@pytest.mark.store
def test_the_page_files_are_the_documents(daemon, served) -> None:
    static = "/static/{name}"
    names = served["paths"][static]["get"]["parameters"][0]["schema"]["enum"]
    for name in names:
        answer = daemon.request("GET", f"/static/{name}")
        media = answer[1]["Content-Type"].split(";")[0]
        assert conforms(served, answer, static, "get", media) != b""
        current = {"If-None-Match": answer[1]["ETag"]}
        conforms(served, daemon.request("GET", f"/static/{name}", headers=current), static, "get")


TEXT = {"Content-Type": "text/plain"}
PNG = {"Accept": "image/png"}
FAR = {"Last-Event-ID": "12345678"}  # 8 digits: past any event id


@pytest.mark.slow
@pytest.mark.store
@pytest.mark.parametrize(
    "method, path, body, headers, status, code",
    [
        ("POST", "/v1/memes", b'{"topic": ', {}, 400, "malformed_json"),
        ("GET", "/v1/memes/nobody", None, {}, 404, "not_found"),
        ("GET", "/v1/tasks/nothing", None, {}, 404, "not_found"),
        ("DELETE", "/v1/tasks/nothing", None, {}, 404, "not_found"),
        ("GET", "/v1/tasks/nothing/events", None, {}, 404, "not_found"),
        ("GET", "/v1/tasks/nothing/events?last_event_id=x", None, {}, 422, "invalid_field"),
        ("GET", "/v1/tasks/nothing/events", None, FAR, 422, "invalid_field"),
        ("GET", "/static/missing.js", None, {}, 404, "not_found"),
        ("GET", "/static/index.html", None, {}, 404, "not_found"),
        ("GET", "/v1/memes/nobody/image.png", None, {}, 404, "not_found"),
        ("DELETE", "/v1/memes/nobody", None, {}, 404, "not_found"),
        ("PUT", "/v1/memes", b"{}", {}, 405, "method_not_allowed"),
        ("POST", "/v1/memes", b" " * 20000, {}, 413, "body_too_large"),
        ("POST", "/v1/memes", b'{"topic": "x"}', TEXT, 415, "unsupported_media_type"),
        ("POST", "/v1/memes", b'{"topic": "x", "audience": 7}', {}, 422, "invalid_field"),
        ("POST", "/v1/memes", b'{"topic": "x", "format": "nope"}', {}, 422, "invalid_field"),
        ("POST", "/v1/memes", b'{"topic": "x", "style": "a\\u0001"}', {}, 422, "invalid_field"),
        ("POST", "/v1/memes?async=maybe", b'{"topic": "x"}', {}, 422, "invalid_field"),
        ("POST", "/v1/memes?async=1", b'{"topic": "x"}', PNG, 406, "not_acceptable"),
        ("GET", "/v1/memes?cursor=forged", None, {}, 422, "invalid_field"),
        ("GET", "/v1/memes?limit=0", None, {}, 422, "invalid_field"),
        ("POST", "/v1/memes", b'{"topic": "mail me at a@example.com"}', {}, 422, "inappropriate"),
    ],
)  # fmt: skip
def test_every_error_is_the_documents(daemon, served, method, path, body, headers, status, code):
    answer = daemon.request(method, path, raw=body, headers=headers)
    template = next(
        p
        for p in served["paths"]
        if p.count("/") == path.split("?")[0].count("/")
        and all(
            a == b or a.startswith("{") for a, b in zip(p.split("/"), path.split("?")[0].split("/"))
        )
    )
    error = conforms(served, answer, template, method.lower())
    assert answer[0] == status and error["error"]["code"] == code, error


def test_an_undeclared_field_fails_the_check() -> None:
    """The check above can fail: one field the document does not declare, at any depth."""
    schema = {"$ref": "#/components/schemas/Task", "components": DOCUMENT["components"]}
    task = {
        "task_id": "t1",
        "status": "failed",
        "stage": "done",
        "progress": 1.0,
        "created_at": 1.0,
        "updated_at": 2.0,
        "error": {"code": "internal", "message": "m"},
    }
    assert not list(Draft202012Validator(schema).iter_errors(task))
    for extra in ({**task, "quarantined": True}, {**task, "error": {**task["error"], "x": 1}}):
        assert list(Draft202012Validator(schema).iter_errors(extra))
