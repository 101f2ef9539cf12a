"""The aiohttp gateway: HTTP in, ``await`` an actor through the bridge, JSON out.

It validates everything a client sends and holds no domain logic; the middleware
(:mod:`memesys.http.middleware`) reads bodies within their deadline, admits requests (or
refuses them with a computed Retry-After) and answers every failure with the contract's JSON
error (:mod:`memesys.http.responses`). Synchronous memes also wait for one of the tree's
generation slots (:mod:`memesys.http.admission`), so the gateway never sends the tree more
than it can hold. :meth:`Gateway.server_options` and :meth:`Gateway.watch` are how the daemon
serves it (the request-head timeout, :mod:`memesys.http.connections`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from actors.bridge import Directory, RemoteFailure
from actors.messages import Ping, StatusQuery, TreeStatus
from memesys.config import GatewayConfig
from memesys.domain.formats import catalogue_json
from memesys.domain.ids import valid_id
from memesys.domain.messages import (
    CancelTask,
    DeleteMeme,
    GenerateMeme,
    GetImage,
    GetMeme,
    GetTask,
    ListMemes,
    MemeImage,
    StoreHealth,
    StoreState,
    SubmitTask,
)
from memesys.errors import ErrorCode, MemesysError, translate
from memesys.http import access
from memesys.http.admission import Lane
from memesys.http.auth import Auth, Verify
from memesys.http.client_limits import ClientLimits
from memesys.http.connections import MAX_SWEEP_S
from memesys.http.engines import Split, TreeEngine
from memesys.http.metrics import CONTENT_TYPE, Metrics
from memesys.http.middleware import Guard
from memesys.http.negotiation import wants_png
from memesys.http.page import Page
from memesys.http.progress import EventSource, ProgressStreams
from memesys.http.responses import error, public_failure
from memesys.http.schemas import (
    CreateQuery,
    PageQuery,
    Task,
    meme_request,
    openapi_document,
)
from memesys.http.single_flight import SingleFlight
from memesys.http.spans import traced
from memesys.http.tree_metrics import TreeSeries, troubles
from memesys.http.validation import (
    InvalidField,
    MalformedJson,
    known_etags,
    parse_generate,
    parse_json,
    query_of,
    shown,
)
from memesys.telemetry.tracing import current_trace_id
from memesys.tree.paths import LEDGER, ROOT, STORE

log = logging.getLogger("memesys.http")

READY_TIMEOUT_S = 2.0
METRICS_STORE_TIMEOUT_S = 0.5  # /metrics asks the store how it is, briefly
# /metrics and /readyz ask the root for the tree: it answers within its budget whatever its
# children do (a child late to answer is "unresponsive"); the ask's own bound is a bit longer.
TREE_BUDGET_S = 0.8
TREE_TIMEOUT_S = 1.0
STORE_TIMEOUT_S = 5.0
# An image's URL names one meme's picture, which never changes: a year, the longest HTTP allows.
IMAGE_CACHE_CONTROL = "public, max-age=31536000, immutable"

# What a task's record shows as it is (its meme and error are shown as the client may see them).
_TASK_FIELDS = tuple(k for k in Task.__annotations__ if k in Task.__required_keys__ - {"task_id"})
LookUp = Callable[[GenerateMeme], Awaitable[dict[str, Any] | None]]


class Gateway:
    def __init__(
        self,
        cfg: GatewayConfig,
        directory: Directory,
        generation_slots: int | None = None,
        shared_metrics: Callable[[], str] | None = None,
        engines: Split | None = None,
        look_up: LookUp | None = None,
        events: EventSource | None = None,
        verify_token: Verify | None = None,
        client_limits: ClientLimits | None = None,
    ) -> None:
        """``generation_slots``: the memes the tree makes at once (its generators' capacity);
        synchronous meme requests past it wait in the gateway's queue instead of being
        refused inside the tree. None: ``max_in_flight``. ``shared_metrics``: the series kept
        in Redis (the LLM client layer's, from every worker process; the task queue's), read
        in a thread, briefly.
        ``engines``: which engine makes each synchronous meme (None: the tree, always).
        ``look_up``: what a maker does first (the cache for a meme, the store's health for a
        fresh one), done on Redis before any engine is asked (None: the engine does it).
        ``events``: the event log's reader of task event streams (None: ``GET
        /v1/tasks/{id}/events`` answers 503 ``unavailable``).
        ``verify_token``: a token's name, from the token store (needed when ``cfg.auth`` is
        "required"); ``client_limits``: the shared per-client limit (needed when
        ``cfg.client_rate_per_minute`` is set)."""
        self.cfg = cfg
        self.shared_metrics = shared_metrics
        self.directory = directory
        self.engines = engines or Split(TreeEngine(directory))
        self.look_up = look_up
        self.meme_request = meme_request(cfg.max_topic_chars)
        self.openapi_doc = openapi_document(cfg.max_topic_chars)
        self.page = Page()
        self.progress = None if events is None else ProgressStreams(cfg, events, self._task)
        self.metrics = Metrics()
        self.guard = Guard(cfg, self.metrics, Auth(cfg.auth_required, verify_token), client_limits)
        # A request waits for a generation slot at most half its deadline: the rest is for
        # making the meme (a request that starts with seconds left would only time out).
        self.generation = Lane(
            "generation",
            generation_slots or cfg.max_in_flight,
            cfg.max_queue,
            min(cfg.queue_timeout_s, cfg.request_timeout_s / 2),
        )
        self.metrics.gauge(
            "memesys_gateway_generating",
            "synchronous memes being made",
            lambda: self.generation.active,
        )
        self.metrics.gauge(
            "memesys_gateway_generation_queued",
            "synchronous meme requests waiting for a generation slot",
            lambda: self.generation.queued,
        )
        self.flights: SingleFlight[dict[str, Any]] = SingleFlight()
        self.metrics.counted(
            "memesys_bridge_stale_replies_total",
            "replies that arrived after their ask gave up",
            lambda: directory.bridge.stale_replies,
        )
        # The store as last seen by /readyz or /metrics: up (1) or down (0, Redis unreachable
        # or the store not answering), and the poison records it has quarantined so far.
        self.store_up, self.quarantined = 1.0, 0
        self.metrics.gauge(
            "memesys_store_up",
            "1 while the store reaches Redis, 0 while down",
            lambda: self.store_up,
        )
        self.metrics.counted(
            "memesys_store_quarantined_total",
            "records quarantined because they did not parse or validate",
            lambda: self.quarantined,
        )
        self.shared_read = 0.0
        self.metrics.gauge(
            "memesys_redis_series_read",
            "1 if this scrape read the series kept in Redis (LLM, task queue) in time, else 0",
            lambda: self.shared_read,
        )
        self.tree_series = TreeSeries()  # the tree as the last /metrics read it
        self.metrics.registry.register(self.tree_series)

    def server_options(self) -> dict[str, Any]:
        """aiohttp server settings for ``web.AppRunner(app, **options)``. aiohttp's own idle
        keep-alive timeout is a backstop a sweep after the request-head timeout
        (:meth:`watch` closes idle connections first, and counts them); the access log
        (:mod:`memesys.http.access`)."""
        return {"keepalive_timeout": self.cfg.header_timeout_s + MAX_SWEEP_S, **access.options()}

    def watch(self, server: web.Server) -> None:
        """Close ``server``'s connections that deliver no request head in time (call after
        ``AppRunner.setup()`` with ``runner.server``; stopped with the application)."""
        self.guard.connections.watch(server)

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.cfg.max_body_bytes,
            middlewares=[traced, self.guard.middleware],
        )
        app.on_cleanup.append(self.guard.connections.stop)
        if self.progress is not None:
            app.on_shutdown.append(self.progress.close)
        app.add_routes(
            [
                web.post("/v1/memes", self.create_meme),
                web.get("/v1/memes", self.list_memes),
                web.get("/v1/memes/{id}", self.get_meme),
                web.get("/v1/memes/{id}/image.png", self.get_image),
                web.delete("/v1/memes/{id}", self.delete_meme),
                web.get("/v1/tasks/{id}", self.get_task),
                web.delete("/v1/tasks/{id}", self.cancel_task),
                web.get("/v1/tasks/{id}/events", self.task_events),
                web.get("/v1/formats", self.formats),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics_text),
                web.get("/openapi.json", self.openapi),
                *self.page.routes(),
            ]
        )
        return app

    # -- memes --------------------------------------------------------------------------------

    async def create_meme(self, request: web.Request) -> web.Response:
        try:
            run_async = query_of(CreateQuery, request.query).is_async
        except InvalidField as exc:
            return error(exc.code, str(exc), field=exc.field)
        png = wants_png(request.headers.get("Accept"))
        if png and run_async:
            return error(
                ErrorCode.NOT_ACCEPTABLE,
                "async=true answers with a task in JSON, not an image: "
                "drop async=true, or the Accept: image/png header",
            )
        # The middleware has checked the Content-Type and read the body: this is the copy.
        try:
            body = parse_json(await request.read())
        except MalformedJson as exc:
            return error(exc.code, str(exc))
        # The request's trace (its span's, or an incoming traceparent's) is the meme's.
        trace_id = current_trace_id() or uuid.uuid4().hex
        try:
            order: GenerateMeme = parse_generate(body, self.meme_request, trace_id)
        except InvalidField as exc:
            return error(exc.code, str(exc), field=exc.field)
        if run_async:
            task_id = await self.directory.ask(LEDGER, SubmitTask(order), STORE_TIMEOUT_S)
            status_url = f"/v1/tasks/{task_id}"
            return web.json_response(
                {"task_id": task_id, "status_url": status_url},
                status=202,
                headers={"Location": status_url, "X-Trace-Id": trace_id},
            )
        meme = None
        if self.look_up is not None:
            meme = await self.look_up(order)
            order = dataclasses.replace(order, looked_up=True)
        if meme is not None:
            self.metrics.count(
                "memesys_cache_hits_total", "meme requests answered from the cache by the gateway"
            )
        elif order.fresh:
            meme = await self._generate(order)
        else:
            if self.look_up is not None:  # (a fresh order's look-up is the store's health)
                self.metrics.count(
                    "memesys_cache_misses_total",
                    "meme requests the gateway's cache look-up did not answer (made anew)",
                )
            # Identical requests in flight at once (all but the trace id; never "fresh" ones)
            # share one generation: the first takes a generation slot, the others await it.
            meme, shared = await self.flights.run(
                dataclasses.replace(order, trace_id=""), lambda: self._generate(order)
            )
            if shared:
                self.metrics.count(
                    "memesys_memes_shared_total",
                    "meme requests answered by an identical one in flight",
                )
        headers = {"Location": f"/v1/memes/{meme['id']}", "X-Trace-Id": trace_id}
        if png:
            return await self._new_png(meme["id"], headers)
        return web.json_response(meme, status=201, headers=headers)

    async def _new_png(self, meme_id: str, headers: dict[str, str]) -> web.Response:
        """A new meme's picture itself, for a client that asked for ``image/png``; its id in
        ``X-Meme-Id`` (and ``Location``)."""
        image: MemeImage | None = await self.directory.ask(
            STORE, GetImage(meme_id), STORE_TIMEOUT_S, idempotent=True
        )
        if image is None or image.png is None:
            return error(ErrorCode.NOT_FOUND, f"no image for meme {meme_id!r}")
        return web.Response(
            status=201,
            body=image.png,
            content_type="image/png",
            headers={**headers, "X-Meme-Id": meme_id, "ETag": f'"{image.sha256}"'},
        )

    async def _generate(self, order: GenerateMeme) -> dict[str, Any]:
        """One meme from the engine whose turn it is, once a generation slot is free (the wait
        comes out of the request's deadline); counted by engine and outcome."""
        engine = self.engines.choose()
        async with self.generation.slot() as waited:
            started = time.perf_counter()
            try:
                meme = await engine.generate(order, self.cfg.request_timeout_s - waited)
            except (RemoteFailure, MemesysError) as exc:
                code = exc.failure.code if isinstance(exc, RemoteFailure) else exc.code
                self.metrics.count(
                    "memesys_memes_failed_total",
                    "memes not made, by reason",
                    code=(translate(code) or ErrorCode.INTERNAL).value,
                    engine=engine.name,
                )
                raise
        self.metrics.observe(
            "memesys_meme_seconds",
            "time to make a meme, by engine",
            time.perf_counter() - started,
            engine=engine.name,
            cached=str(meme["cached"]).lower(),
        )
        self.metrics.count(
            "memesys_memes_total",
            "memes answered by an engine",
            engine=engine.name,
            cached=str(meme["cached"]).lower(),
        )
        self._count_verdicts(meme, engine.name)
        return meme

    def _count_verdicts(self, meme: dict[str, Any], engine: str) -> None:
        """Every verdict served, so a degraded verifier shows in metrics, not only in JSON."""
        if meme["cached"]:
            return
        for verifier, verdict in meme["verification"]["verdicts"].items():
            self.metrics.count(
                "memesys_verdicts_total",
                "verdicts of served memes",
                verifier=verifier,
                status=verdict["status"],
                engine=engine,
            )

    def _meme_id(self, request: web.Request) -> str:
        meme_id = request.match_info["id"]
        if not valid_id(meme_id):
            raise web.HTTPNotFound(text=f"no meme {shown(meme_id)}")
        return meme_id

    async def get_meme(self, request: web.Request) -> web.Response:
        meme_id = self._meme_id(request)
        meme = await self.directory.ask(STORE, GetMeme(meme_id), STORE_TIMEOUT_S, idempotent=True)
        if meme is None:
            return error(ErrorCode.NOT_FOUND, f"no meme {meme_id!r}")
        return web.json_response(meme)

    async def get_image(self, request: web.Request) -> web.Response:
        """The PNG, validated by its SHA-256 (a strong ETag: the same bytes forever) and
        cacheable for a year; 304 when the client's If-None-Match holds it. A missing or
        corrupt file is the store's 404 saying so."""
        meme_id = self._meme_id(request)
        known = known_etags(request.headers.get("If-None-Match"))
        image: MemeImage | None = await self.directory.ask(
            STORE, GetImage(meme_id, known), STORE_TIMEOUT_S, idempotent=True
        )
        if image is None:
            return error(ErrorCode.NOT_FOUND, f"no image for meme {meme_id!r}")
        headers = {"ETag": f'"{image.sha256}"', "Cache-Control": IMAGE_CACHE_CONTROL}
        if image.png is None:
            return web.Response(status=304, headers=headers)
        return web.Response(body=image.png, content_type="image/png", headers=headers)

    async def list_memes(self, request: web.Request) -> web.Response:
        try:
            query = query_of(PageQuery, request.query)
        except InvalidField as exc:
            return error(exc.code, str(exc), field=exc.field)
        page = await self.directory.ask(
            STORE, ListMemes(query.limit, query.cursor), STORE_TIMEOUT_S, idempotent=True
        )
        return web.json_response({"memes": page.memes, "next_cursor": page.next_cursor})

    async def delete_meme(self, request: web.Request) -> web.Response:
        meme_id = self._meme_id(request)
        if not await self.directory.ask(STORE, DeleteMeme(meme_id), STORE_TIMEOUT_S):
            return error(ErrorCode.NOT_FOUND, f"no meme {meme_id!r}")
        return web.Response(status=204)

    async def _task(self, task_id: str) -> dict[str, Any] | None:
        """The task's record (with its meme once made, its stage while it runs), or None."""
        if not valid_id(task_id):
            return None
        task: dict[str, Any] | None = await self.directory.ask(
            STORE, GetTask(task_id), STORE_TIMEOUT_S, idempotent=True
        )
        return task

    async def get_task(self, request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        task = await self._task(task_id)
        if task is None:
            return error(ErrorCode.NOT_FOUND, f"no task {shown(task_id)}")
        return web.json_response(self._task_body(task_id, task))

    async def cancel_task(self, request: web.Request) -> web.Response:
        """202 with the task, cancelled; answered once its meme's work has stopped."""
        task_id = request.match_info["id"]
        if not valid_id(task_id):
            return error(ErrorCode.NOT_FOUND, f"no task {shown(task_id)}")
        task = await self.directory.ask(LEDGER, CancelTask(task_id), STORE_TIMEOUT_S * 2)
        return web.json_response(self._task_body(task_id, task), status=202)

    async def task_events(self, request: web.Request) -> web.StreamResponse:
        if self.progress is None:
            return error(ErrorCode.UNAVAILABLE, "this gateway reads no event log")
        return await self.progress.stream(request)

    def _task_body(self, task_id: str, task: dict[str, Any]) -> dict[str, Any]:
        body = {key: task[key] for key in _TASK_FIELDS}
        if task.get("meme") is not None:
            body["meme"] = task["meme"]
        if task.get("error") is not None:  # recorded as the tree said it: translated here
            code, message = public_failure(
                task["error"].get("code", ""), task["error"].get("message", ""), f"task {task_id}"
            )
            body["error"] = {"code": code.value, "message": message}
        return {"task_id": task_id, **body}

    async def formats(self, request: web.Request) -> web.Response:
        return web.json_response({"formats": catalogue_json()})

    # -- operations ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _store_health(self, timeout: float) -> object:
        """Ask the store how it is and remember it for the gauges; raises RemoteFailure."""
        try:
            state = await self.directory.ask(STORE, StoreHealth(), timeout)
        except RemoteFailure:
            self.store_up = 0.0
            raise
        self.store_up = 1.0 if state else 0.0
        if isinstance(state, StoreState) and state.up:
            self.quarantined = sum(n for _, n in state.quarantined)
        return state

    async def _tree(self) -> TreeStatus | None:
        """The whole tree from the root, within :data:`TREE_TIMEOUT_S`; None if it did not
        answer in time (restarting, hung, gone)."""
        try:
            tree = await self.directory.bridge.ask(
                self.directory.root, StatusQuery(TREE_BUDGET_S), TREE_TIMEOUT_S
            )
        except RemoteFailure:
            return None
        return tree if isinstance(tree, TreeStatus) else None

    async def _check(self, name: str, ask: Awaitable[object]) -> tuple[str, object]:
        """The check's text for /readyz, and the answer (None if it failed)."""
        try:
            answer = await ask
        except RemoteFailure as exc:
            code, message = public_failure(exc.failure.code, exc.failure.message, f"readyz {name}")
            return f"{code.value}: {message}", None
        if answer:
            return "ok", answer
        return f"down: {answer.reason}" if isinstance(answer, StoreState) else "failing", answer

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready: the root answers, the store reaches Redis and the projections hold the event
        log (a daemon whose memes were lost is not ready while the projector replays them).
        ``subtrees``: the parts of the
        tree that do not run (restarting, escalated, unresponsive) and why each last exited;
        they do not make the daemon unready by themselves (a pool's other workers serve)."""
        (actors, _), (store, state), tree = await asyncio.gather(
            self._check(
                "actors", self.directory.bridge.ask(self.directory.root, Ping(), READY_TIMEOUT_S)
            ),
            self._check("store", self._store_health(READY_TIMEOUT_S)),
            self._tree(),
        )
        projections = "unknown"
        if isinstance(state, StoreState) and state.up:
            projections = "catching up with the event log" if state.projections_behind else "ok"
        checks = {"actors": actors, "store": store, "projections": projections}
        subtrees = troubles(tree) if tree is not None else []
        if tree is None:
            reason = f"its status did not arrive within {TREE_TIMEOUT_S:g} s"
            subtrees = [{"path": ROOT, "state": "unresponsive", "reason": reason}]
        ready = all(v == "ok" for v in checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "checks": checks, "subtrees": subtrees},
            status=200 if ready else 503,
        )

    async def _shared_text(self) -> str:
        """The series kept in Redis (a registry of their own), or "" if Redis does not answer
        in time (the rest of /metrics is still served)."""
        self.shared_read, text = 0.0, ""
        if self.shared_metrics is None:
            return text
        try:
            async with asyncio.timeout(METRICS_STORE_TIMEOUT_S):
                text = await asyncio.to_thread(self.shared_metrics)
        except Exception as exc:  # Redis unreachable or slow
            log.debug("the series kept in Redis are not shown: %s", exc)
        else:
            self.shared_read = 1.0
        return text

    async def _store_up(self) -> None:
        try:
            await self._store_health(METRICS_STORE_TIMEOUT_S)
        except RemoteFailure:
            pass  # shown as memesys_store_up 0

    async def metrics_text(self, request: web.Request) -> web.Response:
        """Every series of the daemon in one scrape: the gateway's, the tree's (asked of the
        root), those kept in Redis; each part bounded, so a scrape answers while the tree
        restarts (``memesys_tree_status_read`` 0) or Redis is away."""
        _, self.tree_series.tree, shared = await asyncio.gather(
            self._store_up(), self._tree(), self._shared_text()
        )
        text = self.metrics.render() + shared
        return web.Response(
            body=text.encode(),
            headers={"Content-Type": CONTENT_TYPE, "X-Content-Type-Options": "nosniff"},
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi_doc)
