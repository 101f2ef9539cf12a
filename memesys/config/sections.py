"""The configuration's shape: one frozen dataclass per section of ``default.toml``.

The values live in the packaged ``default.toml`` (the one source of defaults); these classes
give each key its type and its allowed range, so a wrong value stops start-up with a line
naming the key instead of failing later inside a worker. No field has a default here (the
defaults are the file's); each may have metadata (``field(metadata=...)``):

- ``min`` / ``max``: inclusive bounds of a number;
- ``choices``: the words a string may take;
- ``secret``: masked by ``memesys --print-config``.
"""

from dataclasses import dataclass, field
from pathlib import Path


def bounded(lo: float | None = None, hi: float | None = None) -> dict[str, object]:
    """The metadata of a numeric field limited to [lo, hi] (either side open when None)."""
    return {"min": lo, "max": hi}


def one_of(*choices: str) -> dict[str, object]:
    return {"choices": choices}


def secret() -> dict[str, object]:
    return {"secret": True}


PORT = (1, 65535)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class SystemConfig:
    admin_port: int = field(metadata=bounded(*PORT))
    bind_host: str
    data_dir: str
    ready_timeout_s: float = field(metadata=bounded(0.1, 600))
    shutdown_timeout_s: float = field(metadata=bounded(0.1, 600))
    engine: str = field(metadata=one_of("actors", "inprocess"))
    ab_split: float = field(metadata=bounded(0, 1))


@dataclass(frozen=True)
class LogConfig:
    level: str = field(metadata=one_of(*LOG_LEVELS))
    format: str = field(metadata=one_of("text", "json"))
    file: str  # "": stderr
    max_bytes: int = field(metadata=bounded(4096, None))
    backups: int = field(metadata=bounded(1, 1000))


@dataclass(frozen=True)
class SupervisionConfig:
    max_restarts: int = field(metadata=bounded(0, None))
    period_s: float = field(metadata=bounded(0.001, None))
    backoff_initial_s: float = field(metadata=bounded(0, 3600))
    backoff_max_s: float = field(metadata=bounded(0, 3600))
    backoff_jitter: float = field(metadata=bounded(0, 1))
    child_shutdown_s: float = field(metadata=bounded(0.01, 600))
    health_interval_s: float = field(metadata=bounded(0, 3600))  # 0: no health checks
    health_timeout_s: float = field(metadata=bounded(0.05, 3600))


@dataclass(frozen=True)
class GatewayConfig:
    host: str
    port: int = field(metadata=bounded(0, PORT[1]))  # 0: an ephemeral port (tests)
    max_body_bytes: int = field(metadata=bounded(256, 64 * 2**20))
    max_topic_chars: int = field(metadata=bounded(1, 10_000))
    request_timeout_s: float = field(metadata=bounded(0.1, 3600))
    max_in_flight: int = field(metadata=bounded(1, None))
    max_queue: int = field(metadata=bounded(0, None))
    queue_timeout_s: float = field(metadata=bounded(0, 3600))
    header_timeout_s: float = field(metadata=bounded(0.1, 3600))
    body_timeout_s: float = field(metadata=bounded(0.1, 3600))
    max_event_streams: int = field(metadata=bounded(1, 100_000))
    event_stream_max_s: float = field(metadata=bounded(1, 86_400))
    event_keepalive_s: float = field(metadata=bounded(0.1, 3600))
    auth: str = field(metadata=one_of("off", "required"))
    client_rate_per_minute: int = field(metadata=bounded(0, 100_000))  # 0: no limit

    @property
    def auth_required(self) -> bool:
        return self.auth == "required"


@dataclass(frozen=True)
class WorkersConfig:
    generators: int = field(metadata=bounded(1, 256))
    max_in_flight_per_worker: int = field(metadata=bounded(1, 100_000))
    render: int = field(metadata=bounded(1, 256))
    store: int = field(metadata=bounded(1, 256))
    verifiers: int = field(metadata=bounded(1, 256))


@dataclass(frozen=True)
class PipelineConfig:
    mode: str = field(metadata=one_of("parallel", "sequential"))
    fuse_select_write: bool
    refine_threshold: float = field(metadata=bounded(0, 1))
    max_refine_rounds: int = field(metadata=bounded(0, 10))
    min_refine_gain: float = field(metadata=bounded(0, 1))
    refine_within_s: float = field(metadata=bounded(0, 3600))
    stage_timeout_s: float = field(metadata=bounded(0.01, 3600))
    program_path: str
    render_delay_s: float = field(metadata=bounded(0, 1))

    @property
    def fuses_select_write(self) -> bool:
        """Select and write run as one LM call: ``fuse_select_write`` in ``parallel`` mode (the
        ``sequential`` reference keeps every stage apart)."""
        return self.fuse_select_write and self.mode == "parallel"


@dataclass(frozen=True)
class TasksConfig:
    ttl_s: int = field(metadata=bounded(1, None))
    timeout_s: float = field(metadata=bounded(0.1, None))
    max_in_flight: int = field(metadata=bounded(1, 100_000))


@dataclass(frozen=True)
class RedisConfig:
    url: str = field(metadata=secret())  # a URL may carry a password
    key_prefix: str
    cache_ttl_s: int = field(metadata=bounded(1, None))
    restart_backoff_initial_s: float = field(metadata=bounded(0, 60))
    restart_backoff_max_s: float = field(metadata=bounded(0, 600))
    hang_timeout_s: float = field(metadata=bounded(0, 3600))
    min_free_disk_mb: float = field(metadata=bounded(0.01, 1_000_000))
    retry_backoff_initial_s: float = field(metadata=bounded(0.001, 10))
    retry_backoff_max_s: float = field(metadata=bounded(0.001, 60))
    quarantine_ttl_s: int = field(metadata=bounded(1, None))


@dataclass(frozen=True)
class StorageConfig:
    durability: str = field(metadata=one_of("fsync", "memory"))
    image_dir: str  # empty: <system.data_dir>/images
    retention_days: float = field(metadata=bounded(0, 36500))  # 0: keep forever
    erasure_window_s: float = field(metadata=bounded(1, 3600))
    snapshot_every: int = field(metadata=bounded(100, 100_000_000))


@dataclass(frozen=True)
class LLMConfig:
    model: str
    select_model: str
    write_model: str
    verify_model: str
    score_model: str
    refine_model: str
    api_key: str = field(metadata=secret())
    base_url: str
    timeout_s: float = field(metadata=bounded(0.01, 3600))
    # The client layer (memesys.llm, docs/llm.md).
    max_attempts: int = field(metadata=bounded(1, 10))
    max_connections: int = field(metadata=bounded(1, 1024))
    breaker_failures: int = field(metadata=bounded(1, 1000))
    breaker_reset_s: float = field(metadata=bounded(0.1, 3600))
    rate_limit_rps: int = field(metadata=bounded(0, 100_000))
    rate_limit_tpm: int = field(metadata=bounded(0, 1_000_000_000))
    max_backlog_s: float = field(metadata=bounded(0, 3600))
    task_backlog_s: float = field(metadata=bounded(0, 3600))
    fallback_models: str
    daily_token_budget: int = field(metadata=bounded(0, None))
    prices: str
    max_concurrent_writes: int = field(metadata=bounded(1, 10_000))
    max_concurrent_judgements: int = field(metadata=bounded(1, 10_000))
    hedge_quantile: float = field(metadata=bounded(0.5, 0.999))
    hedge_straggler_quantile: float = field(metadata=bounded(0.5, 0.999))
    hedge_budget: float = field(metadata=bounded(0, 1))


@dataclass(frozen=True)
class RenderConfig:
    # The renderer's range: every legal caption fits at 256 (tests/test_render_property.py);
    # Pillow drawing is refused past 2048.
    width: int = field(metadata=bounded(256, 2048))
    height: int = field(metadata=bounded(256, 2048))
    font_path: str
    template_dir: str
    max_png_bytes: int = field(metadata=bounded(1024, 64 * 2**20))


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``Config.<section>.<key>`` mirrors ``[section] key``."""

    system: SystemConfig
    log: LogConfig
    supervision: SupervisionConfig
    gateway: GatewayConfig
    workers: WorkersConfig
    pipeline: PipelineConfig
    tasks: TasksConfig
    redis: RedisConfig
    storage: StorageConfig
    llm: LLMConfig
    render: RenderConfig

    @property
    def embedded_redis_dir(self) -> str:
        """The data directory of the embedded Redis ("" with a configured ``redis.url``: that
        server and its disk are not the daemon's)."""
        if self.redis.url.strip():
            return ""
        return str(Path(self.system.data_dir).resolve() / "redis")

    @property
    def image_dir(self) -> str:
        """Where the PNGs live, absolute: ``[storage] image_dir``, else ``images`` under the
        data directory."""
        return str(Path(self.storage.image_dir or Path(self.system.data_dir) / "images").resolve())
