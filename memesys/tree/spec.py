"""The supervision tree of the daemon, built from the configuration.

    memesys            rest_for_one  a child restarts after what it depends on: when the store
    ├── redis          one_for_one   the embedded redis-server's owner, restarted with backoff
    │   ├── server                   when the server dies (only when the daemon owns Redis)
    │   └── rewriter                 rewrites its files after erasures
    ├── store          pool          pool restarts, everything after it restarts and resolves
    ├── render         pool          fresh addresses; a generator crash touches nothing before it
    ├── verify         pool          the three verifiers and the scorer, many calls at once
    ├── generator      pool
    ├── tasks          one_for_all   ledger and runner share the leases of tasks in flight
    │   ├── ledger
    │   └── runner
    └── projector                    catches the projections up with the event log, folds its
                                     snapshot; last, so its restart touches nothing else

Every pool is one_for_one over identical, independent workers: one worker's crash is its
own. (docs/architecture.md explains each choice.)
"""

from __future__ import annotations

from actors.pool import Pool
from actors.spec import Backoff, ChildSpec, PoolArgs, Strategy, SupervisorArgs
from actors.supervisor import Supervisor
from memesys.config import Config
from memesys.config.capacity import Capacities
from memesys.render.meme import RenderSettings
from memesys.tree.generator import GeneratorArgs, GeneratorWorker
from memesys.tree.paths import (
    GENERATOR,
    LEDGER_NAME,
    PROJECTOR,
    REDIS,
    REDIS_SERVER_NAME,
    RENDER,
    REWRITER_NAME,
    ROOT,
    RUNNER_NAME,
    STORE,
    TASKS,
    VERIFY,
)
from memesys.tree.projector import STOP_S as PROJECTOR_STOP_S
from memesys.tree.projector import ProjectorActor, ProjectorArgs
from memesys.tree.redis_server import RedisServer, RedisServerArgs
from memesys.tree.renderer import RenderWorker
from memesys.tree.rewriter import STOP_WITHIN_S, Rewriter, RewriterArgs
from memesys.tree.store import StoreArgs, StoreWorker
from memesys.tree.tasks import TaskArgs, TaskLedger, TaskRunner
from memesys.tree.verifier import VerifierArgs, VerifierWorker

# An ordered stop of the embedded server is SHUTDOWN SAVE (EmbeddedRedis.stop waits up to 10 s).
REDIS_SHUTDOWN_S = 15.0


def redis_spec(cfg: Config, server: RedisServerArgs, redis_url: str) -> ChildSpec:
    """The embedded redis-server's owner under a one_for_one supervisor of its own: its
    restarts (with the redis.restart_backoff_* backoff) touch nothing else in the tree, whose
    Redis users ride the outage out; only if it keeps failing past the intensity does the
    root's rest_for_one restart everything. Beside it, the rewriter of its files after
    erasures (started after the server, stopped before it)."""
    sup, redis = cfg.supervision, cfg.redis
    backoff = Backoff(
        redis.restart_backoff_initial_s, redis.restart_backoff_max_s, sup.backoff_jitter
    )
    return ChildSpec(
        REDIS,
        Supervisor,
        SupervisorArgs(
            (
                ChildSpec(REDIS_SERVER_NAME, RedisServer, server, shutdown_s=REDIS_SHUTDOWN_S),
                ChildSpec(
                    REWRITER_NAME,
                    Rewriter,
                    RewriterArgs(redis_url, redis.key_prefix, cfg.storage.erasure_window_s),
                    shutdown_s=STOP_WITHIN_S + 1.5,
                ),
            ),
            Strategy.ONE_FOR_ONE,
            sup.max_restarts,
            sup.period_s,
            backoff,
            **health(cfg),
        ),
    )


def health(cfg: Config) -> dict[str, float]:
    """Every supervisor's and pool's health checks ([supervision] health_*)."""
    return {
        "health_interval_s": cfg.supervision.health_interval_s,
        "health_timeout_s": cfg.supervision.health_timeout_s,
    }


def root_spec(
    cfg: Config, redis_url: str, redis_server: RedisServerArgs | None = None
) -> ChildSpec:
    """The whole tree; ``redis_server``: the embedded server the tree owns (None with a
    configured REDIS_URL)."""
    sup, workers, render = cfg.supervision, cfg.workers, cfg.render
    backoff = Backoff(sup.backoff_initial_s, sup.backoff_max_s, sup.backoff_jitter)

    tasks = cfg.tasks
    redis = cfg.redis
    disk = cfg.embedded_redis_dir
    task_args = TaskArgs(
        redis_url,
        cfg.redis.key_prefix,
        tasks.ttl_s,
        tasks.timeout_s,
        tasks.max_in_flight,
        LEDGER_NAME,
        redis.quarantine_ttl_s,
        redis.retry_backoff_initial_s,
        redis.retry_backoff_max_s,
        disk,
    )

    capacity = Capacities.of(cfg)
    llm_processes = capacity.llm_processes

    def pool(name: str, worker: type, size: int, args: object, outstanding: int) -> ChildSpec:
        return ChildSpec(
            name,
            Pool,
            PoolArgs(
                worker,
                size,
                args,
                max_outstanding=outstanding,
                max_restarts=sup.max_restarts,
                period_s=sup.period_s,
                backoff=backoff,
                worker_shutdown_s=sup.child_shutdown_s,
                **health(cfg),
            ),
        )

    children: tuple[ChildSpec, ...] = (
        pool(
            STORE,
            StoreWorker,
            workers.store,
            StoreArgs(
                redis_url,
                cfg.redis.key_prefix,
                tasks.ttl_s,
                cfg.image_dir,
                redis.quarantine_ttl_s,
                redis.retry_backoff_initial_s,
                redis.retry_backoff_max_s,
                disk,
                cfg.storage.retention_days,
            ),
            capacity.store_per_sender,
        ),
        pool(
            RENDER,
            RenderWorker,
            workers.render,
            RenderSettings.from_config(render),
            capacity.render_per_sender,
        ),
        pool(
            VERIFY,
            VerifierWorker,
            workers.verifiers,
            VerifierArgs(
                cfg.llm,
                cfg.pipeline.stage_timeout_s,
                capacity.verify_per_worker,
                cfg.pipeline,
                redis_url=redis_url,
                key_prefix=redis.key_prefix,
                llm_processes=llm_processes,
            ),
            capacity.verify_per_sender,
        ),
        pool(
            GENERATOR,
            GeneratorWorker,
            workers.generators,
            GeneratorArgs(
                cfg.llm,
                cfg.pipeline,
                redis_url,
                cfg.image_dir,
                redis.key_prefix,
                capacity.per_generator,
                llm_processes=llm_processes,
                cache_ttl_s=redis.cache_ttl_s,
                quarantine_ttl_s=redis.quarantine_ttl_s,
                retry_initial_s=redis.retry_backoff_initial_s,
                retry_max_s=redis.retry_backoff_max_s,
                redis_disk=disk,
            ),
            capacity.per_generator,
        ),
        ChildSpec(
            TASKS,
            Supervisor,
            SupervisorArgs(
                (
                    ChildSpec(LEDGER_NAME, TaskLedger, task_args),
                    ChildSpec(RUNNER_NAME, TaskRunner, task_args, shutdown_s=sup.child_shutdown_s),
                ),
                Strategy.ONE_FOR_ALL,
                sup.max_restarts,
                sup.period_s,
                backoff,
                **health(cfg),
            ),
        ),
        ChildSpec(
            PROJECTOR,
            ProjectorActor,
            ProjectorArgs(redis_url, redis.key_prefix, cfg.storage.snapshot_every),
            shutdown_s=PROJECTOR_STOP_S,
        ),
    )
    if redis_server is not None:  # first: everything after it depends on it
        children = (redis_spec(cfg, redis_server, redis_url),) + children
    return ChildSpec(
        ROOT,
        Supervisor,
        SupervisorArgs(
            children, Strategy.REST_FOR_ONE, sup.max_restarts, sup.period_s, backoff, **health(cfg)
        ),
    )
