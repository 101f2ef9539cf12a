"""The gateway in process: every route and every error code, against the scripted directory
of :mod:`tests.support.gateway` (no actor system starts)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from actors.bridge import AskTimeout
from actors.messages import ChildStatus, Failure, StatusQuery, TreeStatus
from memesys.domain.messages import (
    DeleteMeme,
    GenerateMeme,
    GetImage,
    GetMeme,
    GetTask,
    ListMemes,
    MemeImage,
    MemePage,
    StoreHealth,
    StoreState,
    SubmitTask,
)
from memesys.errors import RUNTIME_CODES, ErrorCode
from memesys.http.app import Gateway
from memesys.http.schemas import openapi_document
from memesys.tree.paths import GENERATOR, LEDGER, STORE
from tests.support.gateway import GATEWAY, FakeDirectory, a_meme, error_of
from tests.support.metrics import sample
from tests.support.timing import wait_for_async

ADDRESS = "ActorAddr-(T|:40123)"
PNG = b"\x89PNG\r\n\x1a\nfake"
DIGEST = hashlib.sha256(PNG).hexdigest()


@dataclasses.dataclass(frozen=True)
class FailureWithRetryAfter(Failure):
    """A failure that says when to retry (a later issue passes real values through)."""

    retry_after: float | None = None


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory()


@pytest.fixture
def gateway(directory: FakeDirectory) -> Gateway:
    return Gateway(GATEWAY, directory)


@pytest.fixture
async def client(aiohttp_client: Callable, gateway: Gateway) -> Any:
    return await aiohttp_client(gateway.app())


# -- every route, answered ---------------------------------------------------------------------


async def test_post_meme_waits_for_the_generator(client, directory) -> None:
    directory.script(GenerateMeme, lambda order: a_meme())
    response = await client.post("/v1/memes", json={"topic": "  mondays ", "seed": 3})
    assert response.status == 201
    assert (await response.json())["id"] == "m1"
    assert response.headers["Location"] == "/v1/memes/m1"
    path, order, timeout, idempotent = directory.asked[-1]
    assert (path, timeout, idempotent) == (GENERATOR, 7.0, True)
    assert (order.topic, order.seed, order.fresh) == ("mondays", 3, False)
    assert order.trace_id == response.headers["X-Trace-Id"]


async def test_a_requests_traceparent_gives_the_meme_its_trace_id(client, directory) -> None:
    """With tracing off in this process too: the caller's trace is the meme's."""
    directory.script(GenerateMeme, lambda order: a_meme())
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    response = await client.post(
        "/v1/memes", json={"topic": "traced"}, headers={"traceparent": traceparent}
    )
    assert response.status == 201 and response.headers["X-Trace-Id"] == trace_id
    assert directory.asked[-1][1].trace_id == trace_id
    response = await client.post(
        "/v1/memes", json={"topic": "traced"}, headers={"traceparent": "00-not-a-trace-01"}
    )
    assert response.status == 201 and len(response.headers["X-Trace-Id"]) == 32
    assert response.headers["X-Trace-Id"] != trace_id


async def test_identical_requests_in_flight_share_one_generation(client, directory) -> None:
    """Single-flight: identical requests at once ask the tree once (the trace id differs, the
    answer is the same meme); a fresh request, or another seed, asks on its own."""
    release = asyncio.Event()

    async def slow(order: GenerateMeme) -> dict:
        await release.wait()
        return a_meme(f"m{order.seed}")

    directory.script(GenerateMeme, slow)
    same = [
        asyncio.ensure_future(client.post("/v1/memes", json={"topic": "x", "seed": 1}))
        for _ in range(2)
    ]  # with the two below: GATEWAY.max_in_flight
    other = [
        asyncio.ensure_future(client.post("/v1/memes", json=body))
        for body in ({"topic": "x", "seed": 2}, {"topic": "x", "seed": 1, "fresh": True})
    ]
    await wait_for_async(lambda: len(directory.asked) >= 3, 5, "three asks")
    # An absence has no event to wait for: the second "same" joins the first's flight rather
    # than asking; 50 ms for it to arrive.
    await asyncio.sleep(0.05)
    release.set()
    answers = await asyncio.gather(*same, *other)
    assert [a.status for a in answers] == [201] * 4
    assert [(await a.json())["id"] for a in answers] == ["m1"] * 2 + ["m2", "m1"]
    assert len({a.headers["X-Trace-Id"] for a in answers}) == 4
    asked = [order for _, order, _, _ in directory.asked if isinstance(order, GenerateMeme)]
    assert sorted((o.seed, o.fresh) for o in asked) == [(1, False), (1, True), (2, False)]
    response = await client.get("/metrics")
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = await response.text()
    assert sample(text, "memesys_memes_shared_total") == 1


async def test_post_meme_async_answers_202_once_recorded(client, directory) -> None:
    directory.script(SubmitTask, "task1")
    response = await client.post("/v1/memes?async=true", json={"topic": "queues"})
    assert response.status == 202
    assert await response.json() == {"task_id": "task1", "status_url": "/v1/tasks/task1"}
    assert response.headers["Location"] == "/v1/tasks/task1"
    path, submitted, _, _ = directory.asked[-1]
    assert path == LEDGER and submitted.order.topic == "queues"


async def test_a_body_without_content_type_is_415(client, directory) -> None:
    """A web page can POST a typeless body (a Blob) cross-origin without asking first: only a
    declared application/json is read (tests/test_faults_clients.py has the rest)."""
    directory.script(GenerateMeme, a_meme())
    response = await client.post(
        "/v1/memes", data=b'{"topic": "x"}', skip_auto_headers=["Content-Type"]
    )
    await error_of(response, 415, "unsupported_media_type")
    assert directory.asked == []


async def test_list_memes_passes_limit_and_cursor(client, directory) -> None:
    directory.script(ListMemes, MemePage([a_meme("m2"), a_meme("m1")], "1.25~m1"))
    response = await client.get("/v1/memes?limit=2&cursor=1.5~m3")
    assert response.status == 200
    body = await response.json()
    assert [m["id"] for m in body["memes"]] == ["m2", "m1"] and body["next_cursor"] == "1.25~m1"
    assert directory.asked[-1][:2] == (STORE, ListMemes(2, "1.5~m3"))


def image_of(request: GetImage) -> MemeImage:
    """The store's answer: the digest alone when the asker holds it."""
    held = DIGEST in request.known or "*" in request.known
    return MemeImage(DIGEST, None if held else PNG)


async def test_get_meme_and_its_image(client, directory) -> None:
    directory.script(GetMeme, a_meme())
    directory.script(GetImage, image_of)
    response = await client.get("/v1/memes/m1")
    assert response.status == 200 and (await response.json())["id"] == "m1"
    response = await client.get("/v1/memes/m1/image.png")
    assert response.status == 200 and response.content_type == "image/png"
    assert await response.read() == PNG
    assert response.headers["ETag"] == f'"{DIGEST}"'
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert directory.asked[-1][1] == GetImage("m1", ())


@pytest.mark.parametrize(
    "if_none_match, known",
    [
        (f'"{DIGEST}"', (DIGEST,)),
        (f'W/"{DIGEST}"', (DIGEST,)),  # If-None-Match compares weakly
        (f'"{"0" * 64}", W/"nope", "{DIGEST}"', ("0" * 64, DIGEST)),
        (" * ", ("*",)),
    ],
)
async def test_an_image_the_client_holds_is_304(client, directory, if_none_match, known) -> None:
    directory.script(GetImage, image_of)
    response = await client.get("/v1/memes/m1/image.png", headers={"If-None-Match": if_none_match})
    assert response.status == 304 and await response.read() == b""
    assert response.headers["ETag"] == f'"{DIGEST}"'
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert directory.asked[-1][1] == GetImage("m1", known)


@pytest.mark.parametrize(
    "if_none_match", [f'"{"0" * 64}"', DIGEST, f'"{DIGEST.upper()}"', "", ",,", '"x' * 3000]
)
async def test_an_image_the_client_does_not_hold_is_sent(client, directory, if_none_match) -> None:
    directory.script(GetImage, image_of)
    response = await client.get("/v1/memes/m1/image.png", headers={"If-None-Match": if_none_match})
    assert response.status == 200 and await response.read() == PNG
    assert len(directory.asked[-1][1].known) <= 1  # only digests are asked about, a few


@pytest.mark.parametrize(
    "message",
    ["the image of meme m1 is missing", "the image of meme m1 was corrupt and is quarantined"],
)
async def test_a_lost_image_file_is_a_404_that_says_so(client, directory, message) -> None:
    directory.script(GetImage, Failure("not_found", message))
    body = await error_of(await client.get("/v1/memes/m1/image.png"), 404, "not_found")
    assert body["message"] == message


async def test_delete_meme(client, directory) -> None:
    directory.script(DeleteMeme, True)
    response = await client.delete("/v1/memes/m1")
    assert response.status == 204
    assert directory.asked[-1][:2] == (STORE, DeleteMeme("m1"))


async def test_get_task(client, directory) -> None:
    directory.script(
        GetTask,
        {
            "status": "succeeded",
            "stage": "done",
            "progress": 1.0,
            "created_at": 1.0,
            "updated_at": 2.0,
            "meme": a_meme(),
        },
    )
    response = await client.get("/v1/tasks/task1")
    assert response.status == 200
    body = await response.json()
    assert body["task_id"] == "task1" and body["status"] == "succeeded"
    assert body["meme"]["id"] == "m1" and "error" not in body


async def test_a_failed_task_shows_a_contract_error(client, directory) -> None:
    """The ledger records the tree's failure as it came; the gateway translates it."""
    raw = {
        "code": "crashed",
        "message": f"generator: {ADDRESS} crashed: TypeError: 'NoneType' object",
    }
    directory.script(
        GetTask,
        {
            "status": "failed",
            "stage": "done",
            "progress": 1.0,
            "created_at": 1.0,
            "updated_at": 2.0,
            "error": raw,
        },
    )
    body = await (await client.get("/v1/tasks/task1")).json()
    assert body["error"] == {"code": "worker_lost", "message": ErrorCode.WORKER_LOST.message}


async def test_formats_health_metrics_openapi_and_page(client, directory) -> None:
    formats = await (await client.get("/v1/formats")).json()
    assert len(formats["formats"]) >= 20
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {
        "status": "ready",
        "checks": {"actors": "ok", "store": "ok", "projections": "ok"},
        "subtrees": [],
    }
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert "memesys_http_requests_total" in text
    assert sample(text, "memesys_bridge_stale_replies_total") == 3
    document = await (await client.get("/openapi.json")).json()
    assert document == json.loads(json.dumps(openapi_document(GATEWAY.max_topic_chars)))
    limits = document["components"]["schemas"]["MemeRequest"]["properties"]
    assert limits["topic"]["maxLength"] == GATEWAY.max_topic_chars  # the configured limit
    response = await client.get("/")
    assert response.status == 200 and "<form" in await response.text()


async def test_readyz_names_the_failing_check_without_internals(client, directory) -> None:
    directory.script(StoreHealth, Failure("dead_address", f"{ADDRESS} is gone (refused)"))
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "not_ready" and body["checks"]["actors"] == "ok"
    assert body["checks"]["store"] == f"unavailable: {ErrorCode.UNAVAILABLE.message}"
    assert body["checks"]["projections"] == "unknown"


async def test_readyz_is_not_ready_while_the_projections_catch_up(client, directory) -> None:
    directory.script(StoreHealth, StoreState(True, projections_behind=True))
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["checks"] == {
        "actors": "ok",
        "store": "ok",
        "projections": "catching up with the event log",
    }


async def test_readyz_names_the_sub_trees_that_do_not_run_and_why(client, directory) -> None:
    worker = ChildStatus("worker-0", "worker", "restarting", None, 2, None, "permanent")
    worker = dataclasses.replace(worker, last_exit="killed by its health check: silent for 4.1 s")
    pool = ChildStatus("render", "pool", "running", 7, 0, 0.0, "permanent", children=(worker,))
    tasks = ChildStatus("tasks", "supervisor", "dead", None, 1, None, "permanent")
    tasks = dataclasses.replace(tasks, escalations=1, last_exit="escalated: restart intensity")
    directory.script(StatusQuery, TreeStatus("memesys", "rest_for_one", (pool, tasks)))
    response = await client.get("/readyz")
    assert response.status == 200  # the root and the store answer: ready, with its troubles
    assert (await response.json())["subtrees"] == [
        {
            "path": "memesys/render/worker-0",
            "state": "restarting",
            "reason": "killed by its health check: silent for 4.1 s",
        },
        {"path": "memesys/tasks", "state": "dead", "reason": "escalated: restart intensity"},
    ]
    directory.script(StatusQuery, Failure("timeout", "no answer within 1 s"))
    body = await (await client.get("/readyz")).json()
    assert body["subtrees"] == [
        {
            "path": "memesys",
            "state": "unresponsive",
            "reason": "its status did not arrive within 1 s",
        }
    ]
    text = await (await client.get("/metrics")).text()  # still served, the gap marked
    assert sample(text, "memesys_tree_status_read") == 0
    assert "memesys_actor_restarts_total{" not in text


async def test_served_verdicts_are_counted_and_failures_by_contract_code(client, directory) -> None:
    directory.script(GenerateMeme, a_meme())
    assert (await client.post("/v1/memes", json={"topic": "x"})).status == 201
    directory.script(GenerateMeme, Failure("crashed", "boom"))
    assert (await client.post("/v1/memes", json={"topic": "x"})).status == 503
    text = await (await client.get("/metrics")).text()
    assert (
        sample(
            text,
            "memesys_verdicts_total",
            engine="actors",
            status="unavailable",
            verifier="factuality",
        )
        == 1
    )
    assert sample(text, "memesys_memes_failed_total", code="worker_lost", engine="actors") == 1
    assert sample(text, "memesys_memes_total", cached="false", engine="actors") == 1


# -- the gateway's own errors ------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b'{"topic":', b"\xff\xfe", b""])
async def test_malformed_json_is_400(client, raw) -> None:
    response = await client.post(
        "/v1/memes", data=raw, headers={"Content-Type": "application/json"}
    )
    await error_of(response, 400, "malformed_json")


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/no/such/route"),
        ("GET", "/v1/memes/a%20b"),
        ("GET", "/v1/memes/..%2Fx/image.png"),
        ("DELETE", "/v1/memes/" + "x" * 65),
        ("GET", "/v1/tasks/a:b"),
    ],
)
async def test_unknown_routes_and_invalid_ids_are_404(client, directory, method, path) -> None:
    response = await client.request(method, path)
    await error_of(response, 404, "not_found")
    assert directory.asked == []  # an invalid id never reaches an actor


@pytest.mark.parametrize(
    "message, path",
    [(GetMeme, "/v1/memes/m1"), (GetImage, "/v1/memes/m1/image.png"), (GetTask, "/v1/tasks/t1")],
)
async def test_unknown_ids_are_404(client, directory, message, path) -> None:
    directory.script(message, None)
    await error_of(await client.get(path), 404, "not_found")


async def test_deleting_an_unknown_meme_is_404(client, directory) -> None:
    directory.script(DeleteMeme, False)
    await error_of(await client.delete("/v1/memes/m1"), 404, "not_found")


@pytest.mark.parametrize(
    "method, path", [("PUT", "/v1/memes"), ("PATCH", "/v1/memes/m1"), ("POST", "/healthz")]
)
async def test_a_wrong_method_is_405_with_allow(client, method, path) -> None:
    response = await client.request(method, path)
    await error_of(response, 405, "method_not_allowed")
    assert response.headers["Allow"]


async def test_a_declared_long_body_is_413_before_reading(client) -> None:
    body = json.dumps({"topic": "y" * 5000})
    error = await error_of(
        await client.post("/v1/memes", data=body, headers={"Content-Type": "application/json"}),
        413,
        "body_too_large",
    )
    assert "4096" in error["message"]


async def test_a_chunked_long_body_is_413(client) -> None:
    async def chunks():
        for _ in range(10):
            yield b" " * 1000

    response = await client.post(
        "/v1/memes", data=chunks(), headers={"Content-Type": "application/json"}
    )
    await error_of(response, 413, "body_too_large")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_a_body_that_is_not_json_is_415(client, content_type) -> None:
    response = await client.post(
        "/v1/memes", data=b'{"topic": "x"}', headers={"Content-Type": content_type}
    )
    await error_of(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "body, field",
    [
        ([1, 2], "body"),
        ({}, "topic"),
        ({"topic": "  "}, "topic"),
        ({"topic": 42}, "topic"),
        ({"topic": "x" * 201}, "topic"),
        ({"topic": "ok", "seed": -1}, "seed"),
        ({"topic": "ok", "seed": True}, "seed"),
        ({"topic": "ok", "fresh": "yes"}, "fresh"),
        ({"topic": "ok", "format": "no-such-format"}, "format"),
        ({"topic": "ok", "colour": "red"}, "colour"),
        ({"topic": "bad\u0000byte"}, "topic"),
        ({"topic": "lone \ud800 surrogate"}, "topic"),
        ({"topic": "ok", "style": "a\u0001"}, "style"),
        ({"topic": "ok", "audience": "zero\u200bwidth"}, "audience"),
        ({"topic": "ok", "style": "x" * 101}, "style"),
        ({"topic": "ok", "format": "Drake"}, "format"),
        ({"topic": "ok", "format": ""}, "format"),
        ({"topic": "ok", "seed": 1.5}, "seed"),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(client, directory, body, field) -> None:
    error = await error_of(await client.post("/v1/memes", json=body), 422, "invalid_field")
    assert error["field"] == field
    assert directory.asked == []


@pytest.mark.parametrize(
    "path, field",
    [
        ("/v1/memes?limit=0", "limit"),
        ("/v1/memes?limit=abc", "limit"),
        ("/v1/memes?limit=101", "limit"),
        ("/v1/memes?cursor=" + "c" * 201, "cursor"),
    ],
)
async def test_invalid_query_fields_are_422(client, path, field) -> None:
    error = await error_of(await client.get(path), 422, "invalid_field")
    assert error["field"] == field


@pytest.mark.parametrize("flag", ["maybe", "TRUE", "yes", ""])
async def test_invalid_async_flag_is_422(client, flag) -> None:
    error = await error_of(
        await client.post(f"/v1/memes?async={flag}", json={"topic": "x"}), 422, "invalid_field"
    )
    assert error["field"] == "async"


async def test_what_the_document_allows_is_accepted_as_it_says(client, directory) -> None:
    """null is none; whitespace (a tab, a newline) is collapsed; an integral float is an
    integer, as JSON Schema says; a blank label is none."""
    directory.script(GenerateMeme, lambda order: a_meme())
    body = {
        "topic": "\tcats\n and  dogs ",
        "format": None,
        "style": "dry\twit",
        "audience": None,
        "seed": 7.0,
    }
    assert (await client.post("/v1/memes", json=body)).status == 201
    order = directory.asked[-1][1]
    assert (order.topic, order.format, order.style, order.audience, order.seed) == (
        "cats and dogs",
        None,
        "dry wit",
        None,
        7,
    )
    assert (await client.post("/v1/memes", json={"topic": "x", "style": " \n "})).status == 201
    assert directory.asked[-1][1].style is None


@pytest.mark.parametrize("cursor", ["forged", "", "1.5", "1.5~", "inf~m1", "1e999~m1", "1~a/b"])
async def test_a_string_that_is_not_a_cursor_is_422(client, directory, cursor) -> None:
    """A cursor is ``<created_at>~<id>`` (the document's pattern): anything else is refused
    before the store is asked; anything like it is a position to page from."""
    error = await error_of(await client.get(f"/v1/memes?cursor={cursor}"), 422, "invalid_field")
    assert error["message"] == "cursor: is not a cursor this server issued"
    assert error["field"] == "cursor"
    assert directory.asked == []


async def test_the_gateway_sheds_load_past_max_in_flight_and_its_queue(
    client, directory, gateway
) -> None:
    """max_in_flight served, max_queue waiting, the next refused at once with a Retry-After
    from the queue; /healthz is never refused (tests/test_faults_clients.py has the rest)."""
    release = asyncio.Event()

    async def slow(order: GenerateMeme) -> dict:
        await release.wait()
        return a_meme()

    directory.script(GenerateMeme, slow)
    held = [
        asyncio.ensure_future(client.post("/v1/memes", json={"topic": f"x{i}"}))
        for i in range(GATEWAY.max_in_flight + GATEWAY.max_queue)
    ]
    await wait_for_async(lambda: len(directory.asked) >= GATEWAY.max_in_flight, 5, "in flight")
    await wait_for_async(lambda: gateway.guard.lane.queued >= GATEWAY.max_queue, 5, "queued")
    shed = await client.post("/v1/memes", json={"topic": "x"})
    error = await error_of(shed, 503, "overloaded")
    assert "capacity" in error["message"]
    assert int(shed.headers["Retry-After"]) >= 1
    assert (await client.get("/healthz")).status == 200
    release.set()
    assert [r.status for r in await asyncio.gather(*held)] == [201] * len(held)


async def test_an_unexpected_exception_is_500_internal_without_traceback(
    client, directory, caplog
) -> None:
    directory.script(GetMeme, ValueError(f"bad state at {ADDRESS}"))
    error = await error_of(await client.get("/v1/memes/m1"), 500, "internal")
    assert error["message"] == ErrorCode.INTERNAL.message
    assert "ValueError" in caplog.text  # the traceback is in the log


# -- failures from the tree --------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
async def test_every_contract_code_from_the_tree_keeps_its_status(client, directory, code) -> None:
    """Whatever code a worker answers, the client gets that code, its status and, on a
    retryable 503, the code's default Retry-After."""
    directory.script(GenerateMeme, Failure(code.value, "it went wrong: nothing to hide"))
    response = await client.post("/v1/memes", json={"topic": "x"})
    error = await error_of(response, code.status, code.value)
    if code.detail:
        assert error["message"] == "it went wrong: nothing to hide"
    else:
        assert error["message"] == code.message
    if "Retry-After" in response.headers:
        assert response.headers["Retry-After"] == str(code.retry_after)


@pytest.mark.parametrize("runtime_code", sorted(RUNTIME_CODES))
async def test_runtime_codes_reach_the_client_as_contract_codes(
    client, directory, caplog, runtime_code
) -> None:
    internals = (
        f"generator/worker-0 at {ADDRESS} crashed: TypeError: unsupported operand "
        "(socket /tmp/memesys/redis.sock)"
    )
    directory.script(GenerateMeme, Failure(runtime_code, internals))
    caplog.set_level(logging.INFO, logger="memesys.http")
    contract = RUNTIME_CODES[runtime_code]
    error = await error_of(
        await client.post("/v1/memes", json={"topic": "x"}), contract.status, contract.value
    )
    assert error["message"] == contract.message
    assert ADDRESS in caplog.text  # the detail is logged, not shown


async def test_an_ask_timeout_is_504_without_retry_after(client, directory) -> None:
    directory.script(GenerateMeme, AskTimeout(7.0))
    await error_of(await client.post("/v1/memes", json={"topic": "x"}), 504, "timeout")


async def test_an_unknown_failure_code_is_500_internal_and_logged(
    client, directory, caplog
) -> None:
    directory.script(GetMeme, Failure("bad_request", "size must be >= 0"))
    await error_of(await client.get("/v1/memes/m1"), 500, "internal")
    directory.script(GetMeme, Failure("no_such_code", "who knows"))
    error = await error_of(await client.get("/v1/memes/m1"), 500, "internal")
    assert error["message"] == ErrorCode.INTERNAL.message
    assert "'no_such_code'" in caplog.text


@pytest.mark.parametrize(
    "message",
    [
        f"verify: {ADDRESS} is gone",
        "redis failed: Error 2 connecting to unix socket: /run/memesys/redis.sock",
        "write: unparseable model output: AdapterParseError: x",
        "Traceback (most recent call last):",
        "ValueError: invalid literal",
    ],
)
async def test_a_detail_code_never_shows_internals(client, directory, message) -> None:
    directory.script(GenerateMeme, Failure("bad_output", message))
    error = await error_of(await client.post("/v1/memes", json={"topic": "x"}), 502, "bad_output")
    assert error["message"] == ErrorCode.BAD_OUTPUT.message


async def test_a_refusal_explains_itself(client, directory) -> None:
    directory.script(GenerateMeme, Failure("inappropriate", "the topic incites violence"))
    error = await error_of(
        await client.post("/v1/memes", json={"topic": "x"}), 422, "inappropriate"
    )
    assert error["message"] == "the topic incites violence"


async def test_a_failure_may_carry_its_own_retry_after(client, directory) -> None:
    directory.script(
        GenerateMeme, FailureWithRetryAfter("llm_rate_limited", "slow down", retry_after=29.2)
    )
    response = await client.post("/v1/memes", json={"topic": "x"})
    await error_of(response, 503, "llm_rate_limited")
    assert response.headers["Retry-After"] == "30"


async def test_store_failures_on_reads_are_contract_errors(client, directory) -> None:
    directory.script(
        GetImage,
        Failure("store_error", "redis failed while reading the png of meme m1: Connection refused"),
    )
    await error_of(await client.get("/v1/memes/m1/image.png"), 503, "store_error")
    directory.script(SubmitTask, Failure("overloaded", "tasks/ledger holds 64 requests"))
    await error_of(await client.post("/v1/memes?async=1", json={"topic": "x"}), 503, "overloaded")
