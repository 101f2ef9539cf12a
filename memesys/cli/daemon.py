"""The daemon: embedded or real Redis, the actor system and its tree, then the gateway.

Order matters: the data directory's lock is taken first (:mod:`memesys.cli.data_lock`: one
daemon per data directory; what a dead one left is cleared), then the actor system is started
(Thespian forks its admin from this process, and every actor inherits the lock) before the
event loop or any thread exists, and after dspy and Pillow are imported so every actor
inherits them copy-on-write instead of importing them again. The system ends with this
process, however it ends (:mod:`actors.lifeline`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from aiohttp import web

import memesys.pipeline.lm
import memesys.render.image  # noqa: F401
from actors.bridge import Bridge, Directory
from actors.spec import shutdown_budget
from actors.system import (
    SystemAlreadyRunning,
    SystemConfig,
    reap,
    session_id,
    shutdown,
    start_root,
    start_system,
)
from memesys.cli.cache_reader import CacheReader
from memesys.cli.data_lock import DataDirLock, StartRefused
from memesys.cli.shared_metrics import reader as shared_metrics_reader
from memesys.cli.version import version
from memesys.cli.watchdog import SystemWatch
from memesys.config import Config, ConfigError, GatewayConfig, load_layers
from memesys.config.capacity import Capacities, uses_inprocess
from memesys.config.printing import render as render_config
from memesys.domain.engines import INPROCESS
from memesys.http.app import Gateway
from memesys.http.client_limits import ClientLimits
from memesys.http.engines import Split, TreeEngine
from memesys.inprocess.engine import InProcessEngine
from memesys.pipeline.program import ProgramError, load_configured
from memesys.storage.connection import CLIENT_TIMEOUT_S
from memesys.storage.durability import report as report_durability
from memesys.storage.errors import StoreError
from memesys.storage.images import ImageFiles
from memesys.storage.memes import MemeStore
from memesys.storage.progress import TaskEvents
from memesys.storage.tokens import TokenReader
from memesys.telemetry import logs, tracing
from memesys.tree.redis_server import plan as plan_redis
from memesys.tree.spec import root_spec

log = logging.getLogger("memesys.cli.daemon")

FATAL_CLEANUP_S = 2.0  # the gateway's close when the actor system is gone
SHUTDOWN_GRACE_S = 3.0  # for the actor system to end by itself after memesys-admin shutdown
REDIS_CONNECT_S = 5.0  # the task event streams' Redis client: its connection's time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="memesys", description="Run the memesys daemon.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--config", help="a TOML file overriding the packaged defaults")
    parser.add_argument("--host", help="gateway address (gateway.host)")
    parser.add_argument("--port", type=int, help="gateway port (gateway.port)")
    parser.add_argument("--admin-port", type=int, help="actor-system admin port")
    parser.add_argument("--data-dir", help="embedded Redis data and run files")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (secrets masked) and exit",
    )
    return parser.parse_args(argv)


def command_line(args: argparse.Namespace) -> dict[tuple[str, str], object]:
    """The settings the command line overrides (None: not given)."""
    return {
        ("gateway", "host"): args.host,
        ("gateway", "port"): args.port,
        ("system", "admin_port"): args.admin_port,
        ("system", "data_dir"): args.data_dir,
    }


class Daemon:
    def __init__(self, cfg: Config, log_defs: dict[str, Any]) -> None:
        """``log_defs``: how every actor process logs (:func:`memesys.telemetry.logs.setup`)."""
        self.cfg = cfg
        system = cfg.system
        self.system_cfg = SystemConfig(system.admin_port, system.bind_host, log_defs)
        self.stopping: asyncio.Event | None = None
        self.exit_code = 0
        self.tree_gone = False  # the watchdog found the tree gone: nothing to stop in order

    def start_actors(self) -> None:
        """Redis, then the actor system and the whole tree; raises if any part fails."""
        data_dir = Path(self.cfg.system.data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_lock = DataDirLock(data_dir)
        self.data_lock.acquire(self.system_cfg.admin_port)
        try:
            ImageFiles(Path(self.cfg.image_dir)).check()
        except OSError as exc:
            raise OSError(f"storage.image_dir cannot be written: {exc}") from exc
        log.info("images under %s", self.cfg.image_dir)
        # The URL is fixed before the tree starts; the embedded server (if no REDIS_URL) is
        # started by the tree's first child, which restarts it if it dies.
        self.redis_url, self.embedded_redis, redis_server = plan_redis(
            self.cfg.redis, self.cfg.storage.durability, self.cfg.embedded_redis_dir
        )
        if self.embedded_redis is None:  # not ours to configure: say what a 201 means on it
            report_durability(self.redis_url, self.cfg.storage.durability)
        started = time.perf_counter()
        try:
            self.asys = start_system(self.system_cfg)
        except SystemAlreadyRunning as exc:
            raise StartRefused(
                f"{exc}, and it is no leftover of this data directory's daemon: if it is a "
                f"memesys daemon, stop it with `memesys-admin --admin-port "
                f"{self.system_cfg.admin_port} shutdown`, or give this one another --admin-port"
            ) from None
        self.sid = session_id(self.system_cfg.admin_port)
        try:
            spec = root_spec(self.cfg, self.redis_url, redis_server)
            self.root = start_root(
                self.asys, spec, self.system_cfg.admin_port, self.cfg.system.ready_timeout_s
            )
        except Exception:
            self.stop_actors()
            raise
        log.info(
            "actor tree up in %.0f ms (actor session %s)",
            (time.perf_counter() - started) * 1000,
            self.sid,
        )
        budget, bound = shutdown_budget(spec), self.cfg.system.shutdown_timeout_s
        if budget > bound:
            log.warning(
                "system.shutdown_timeout_s = %.0f s is shorter than the tree's derived "
                "shutdown budget of %.0f s: a slow drain may be cut short",
                bound,
                budget,
            )

    def stop_actors(self) -> None:
        if self.tree_gone and self.sid is not None:
            # Nothing is left to stop in order, and a half-dead admin (or the logger it leaves
            # holding its port) would make Thespian's own shutdown wait on it: kill what is left.
            # After a requested stop, memesys-admin is shutting the system down itself: killing
            # its admin now would leave that command waiting 10 s for an answer, so the session
            # gets a grace to end on its own first.
            grace = SHUTDOWN_GRACE_S if self.exit_code == 0 else 0.0
            killed = reap(self.sid, grace_s=grace)
            log.info("killed %d processes left of the actor system", killed)
        else:
            shutdown(
                self.asys,
                self.system_cfg.admin_port,
                getattr(self, "root", None),
                self.cfg.system.shutdown_timeout_s,
                self.sid,
            )
        if self.embedded_redis is not None:  # its owner stopped it, unless it was killed
            self.embedded_redis.stop_stale()
            self.embedded_redis.release()
        self.data_lock.release()

    async def serve(self) -> None:
        """Serve until SIGTERM/SIGINT (an ordered stop: in-flight requests finish) or until
        the actor system can no longer serve (the watchdog: in-flight requests are answered
        503 at once, then the daemon exits non-zero)."""
        self.stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        bridge = Bridge(self.asys)
        await bridge.start()
        watch = SystemWatch(bridge, self.root, self.system_cfg.admin_port)
        await watch.find_processes()
        directory = Directory(bridge, self.root)
        inprocess = InProcessEngine(self.cfg, self.redis_url) if uses_inprocess(self.cfg) else None
        cache = (
            CacheReader.of(self.cfg, self.redis_url)
            if inprocess is None
            else CacheReader(inprocess.store, inprocess.maker.key, self.redis_url)
        )
        prefix, gateway_cfg = self.cfg.redis.key_prefix, self.cfg.gateway
        tokens = (
            TokenReader(self.redis_url, prefix, CLIENT_TIMEOUT_S)
            if gateway_cfg.auth_required
            else None
        )
        client_limits = (
            ClientLimits(gateway_cfg.client_rate_per_minute, self.redis_url, prefix)
            if gateway_cfg.client_rate_per_minute
            else None
        )
        gateway = Gateway(
            gateway_cfg,
            directory,
            generation_slots=Capacities.of(self.cfg).generation_slots,
            shared_metrics=shared_metrics_reader(self.redis_url, prefix),
            engines=engines(self.cfg, TreeEngine(directory), inprocess),
            look_up=cache.look_up,
            events=TaskEvents(self.redis_url, prefix, REDIS_CONNECT_S),
            verify_token=tokens.verify if tokens is not None else None,
            client_limits=client_limits,
        )
        runner = web.AppRunner(
            gateway.app(),
            handle_signals=False,
            shutdown_timeout=self.cfg.gateway.request_timeout_s,
            **gateway.server_options(),
        )
        await runner.setup()
        if runner.server is None:  # set by setup()
            raise RuntimeError("the gateway's server was not set up")
        gateway.watch(runner.server)  # closes connections that send no request head in time
        host, port = self.cfg.gateway.host, self.cfg.gateway.port
        await web.TCPSite(runner, host, port, backlog=1024).start()
        gc.freeze()  # as every actor does once started (actors.base): no full walks of DSPy
        print(f"memesys ready at http://{host}:{port}", flush=True)
        moving = threading.Event()
        legacy = asyncio.create_task(asyncio.to_thread(move_legacy_pngs, cache.store, moving))
        watching = asyncio.create_task(watch.watch())
        signalled = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({watching, signalled}, return_when=asyncio.FIRST_COMPLETED)
        moving.set()  # it stops after its batch
        if watching.done():
            verdict = watching.result()
            self.exit_code, self.tree_gone = verdict.status, True
            log.log(
                logging.ERROR if verdict.status else logging.WARNING,
                "stopping the daemon: %s",
                verdict.reason,
            )
            await bridge.close(join_s=0.5)  # every request waiting on the tree fails now: 503
            try:  # the answers are out; a handler still waiting must not hold the exit up
                async with asyncio.timeout(FATAL_CLEANUP_S):
                    await runner.cleanup()
            except TimeoutError:
                log.warning(
                    "the gateway did not close within %.0f s; exiting anyway", FATAL_CLEANUP_S
                )
        else:
            log.info("stopping")
            watching.cancel()
            await runner.cleanup()  # in-flight requests finish
            await bridge.close()
        await legacy
        await cache.close()
        for door in (tokens, client_limits):
            if door is not None:
                await door.close()
        if inprocess is not None:
            await inprocess.close()
        signalled.cancel()


def move_legacy_pngs(store: MemeStore, stopping: threading.Event) -> None:
    """Move the PNGs of memes saved before PNGs were files out of Redis, a batch at a time,
    until none is left or ``stopping`` is set (they are served from Redis until moved). A
    failure (Redis away) is logged and leaves the rest for the next start."""
    moved = 0
    try:
        while not stopping.is_set():
            batch = store.move_legacy_pngs()
            if not batch:
                break
            moved += batch
    except StoreError as exc:
        log.warning("moving PNGs out of Redis paused after %d until the next start: %s", moved, exc)
        return
    if moved:
        log.info("moved %d PNGs out of Redis into %s", moved, store.images.root)


def engines(cfg: Config, tree: TreeEngine, inprocess: InProcessEngine | None) -> Split:
    """Who makes the synchronous memes: ``[system] engine``, and with the tree, the
    ``ab_split`` share made in process (``inprocess``: None when neither uses it)."""
    if cfg.system.engine != INPROCESS:
        return Split(tree, inprocess, cfg.system.ab_split)
    if inprocess is None:
        raise ValueError('[system] engine = "inprocess" needs the in-process engine')
    return Split(inprocess)


def unguarded_exposure(gateway: GatewayConfig) -> str | None:
    """Why the gateway must not start: listening beyond loopback with ``gateway.auth`` off
    (anyone who can reach the port could make memes, spend the budget and erase memes)."""
    if gateway.auth_required or loopback(gateway.host):
        return None
    return (
        f'gateway.auth = "off" with gateway.host = "{gateway.host}" (beyond loopback): set '
        'gateway.auth = "required" (MEMESYS_GATEWAY_AUTH=required) and make a token with '
        "`memesys-admin token create NAME`, or bind 127.0.0.1"
    )


def loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``); any other name, and the
    empty host (every interface), is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def raise_open_file_limit() -> None:
    """Every client connection is a file: the soft limit (often 1,024) goes up to the hard one,
    so a crowd of slow clients cannot starve new connections (``/healthz`` included) of
    descriptors. Actor processes, forked later, inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("open-file limit raised from %d to %d", soft, hard)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        layers = load_layers(args.config, overrides=command_line(args))
        cfg = layers.build()
    except (ConfigError, OSError) as exc:
        print(f"memesys: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(render_config(layers), end="")
        return 0
    exposed = unguarded_exposure(cfg.gateway)
    if exposed is not None:
        print(f"memesys: configuration error: {exposed}", file=sys.stderr)
        return 2
    # The meme program (pipeline.program_path) is checked here, once, before any worker loads
    # it: a bad file is one line and exit 2, not workers failing to start over and over.
    try:
        load_configured(cfg.pipeline)
    except ProgramError as exc:
        print(f"memesys: configuration error: pipeline.program_path: {exc}", file=sys.stderr)
        return 2
    try:  # the OTEL_* variables, read by every process: refused here, before any starts
        tracing.check()
    except tracing.TracingError as exc:
        print(f"memesys: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        log_defs = logs.setup(cfg.log)
    except logs.LogFileError as exc:
        print(f"memesys: configuration error: {exc}", file=sys.stderr)
        return 2
    raise_open_file_limit()
    daemon = Daemon(cfg, log_defs)
    try:
        daemon.start_actors()
    except StartRefused as exc:
        print(f"memesys: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        log.error("start-up failed: %s", exc)
        return 1
    # After the actor system has forked (each actor sets its own up): the gateway's provider.
    tracing.start("gateway")
    try:
        asyncio.run(daemon.serve())
    except OSError as exc:
        log.error("the gateway cannot listen: %s", exc)
        daemon.exit_code = 1
    finally:
        daemon.stop_actors()
        tracing.stop()
    log.info("stopped")
    return daemon.exit_code


if __name__ == "__main__":
    sys.exit(main())
