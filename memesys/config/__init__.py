"""Typed configuration shipped in the package: defaults, file, environment, command line.

``load()`` returns a frozen :class:`Config` (one dataclass per section); see
:mod:`memesys.config.loader` for the order of sources and :mod:`memesys.config.sections` for
each key's type and range.
"""

from memesys.config.loader import ConfigError, load, load_layers
from memesys.config.sections import (
    Config,
    GatewayConfig,
    LLMConfig,
    LogConfig,
    PipelineConfig,
    RedisConfig,
    RenderConfig,
    StorageConfig,
    SupervisionConfig,
    SystemConfig,
    TasksConfig,
    WorkersConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "GatewayConfig",
    "LLMConfig",
    "LogConfig",
    "PipelineConfig",
    "RedisConfig",
    "RenderConfig",
    "StorageConfig",
    "SupervisionConfig",
    "SystemConfig",
    "TasksConfig",
    "WorkersConfig",
    "load",
    "load_layers",
]
