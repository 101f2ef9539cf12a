"""The supervision tree of the daemon, built from the configuration.

    memesys            rest_for_one  a child restarts after what it depends on: when the store
    ├── store          pool          pool restarts, everything after it restarts and resolves
    ├── render         pool          fresh addresses; a generator crash touches nothing before it
    ├── verify         pool          the three verifiers and the scorer, many calls at once
    ├── generator      pool
    └── tasks          one_for_all   ledger and runner share the leases of tasks in flight
        ├── ledger
        └── runner

Every pool is one_for_one over identical, independent workers: one worker's crash is its
own. (docs/architecture.md explains each choice.)
"""
from __future__ import annotations

from actors.pool import Pool
from actors.spec import Backoff, ChildSpec, PoolArgs, Strategy, SupervisorArgs
from actors.supervisor import Supervisor
from memesys.config import Config
from memesys.config.capacity import Capacities
from memesys.tree.generator import GeneratorArgs, GeneratorWorker
from memesys.tree.paths import (
    GENERATOR,
    LEDGER_NAME,
    RENDER,
    ROOT,
    RUNNER_NAME,
    STORE,
    TASKS,
    VERIFY,
)
from memesys.tree.renderer import RenderArgs, RenderWorker
from memesys.tree.store import StoreArgs, StoreWorker
from memesys.tree.tasks import TaskArgs, TaskLedger, TaskRunner
from memesys.tree.verifier import VerifierArgs, VerifierWorker


def root_spec(cfg: Config, redis_url: str) -> ChildSpec:
    sup, workers, render = cfg.supervision, cfg.workers, cfg.render
    backoff = Backoff(sup.backoff_initial_s, sup.backoff_max_s, sup.backoff_jitter)

    tasks = cfg.tasks
    task_args = TaskArgs(redis_url, cfg.redis.key_prefix, tasks.ttl_s, tasks.timeout_s,
                         tasks.max_in_flight, LEDGER_NAME)

    capacity = Capacities.of(cfg)

    def pool(name: str, worker: type, size: int, args: object, outstanding: int) -> ChildSpec:
        return ChildSpec(name, Pool, PoolArgs(
            worker, size, args, max_outstanding=outstanding,
            max_restarts=sup.max_restarts, period_s=sup.period_s, backoff=backoff,
            worker_shutdown_s=sup.child_shutdown_s))

    children = (
        pool(STORE, StoreWorker, workers.store,
             StoreArgs(redis_url, cfg.redis.key_prefix, cfg.redis.cache_ttl_s, tasks.ttl_s),
             capacity.store_per_sender),
        pool(RENDER, RenderWorker, workers.render,
             RenderArgs(render.width, render.height, render.font_path, render.max_png_bytes,
                        render.template_dir), capacity.render_per_sender),
        pool(VERIFY, VerifierWorker, workers.verifiers,
             VerifierArgs(cfg.llm, cfg.pipeline.stage_timeout_s, capacity.verify_per_worker,
                          cfg.pipeline),
             capacity.verify_per_sender),
        pool(GENERATOR, GeneratorWorker, workers.generators,
             GeneratorArgs(cfg.llm, cfg.pipeline, capacity.per_generator),
             capacity.per_generator),
        ChildSpec(TASKS, Supervisor, SupervisorArgs((
            ChildSpec(LEDGER_NAME, TaskLedger, task_args),
            ChildSpec(RUNNER_NAME, TaskRunner, task_args, shutdown_s=sup.child_shutdown_s),
        ), Strategy.ONE_FOR_ALL, sup.max_restarts, sup.period_s, backoff)),
    )
    return ChildSpec(ROOT, Supervisor, SupervisorArgs(
        children, Strategy.REST_FOR_ONE, sup.max_restarts, sup.period_s, backoff))
