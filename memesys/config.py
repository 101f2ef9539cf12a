"""Configuration: config/default.toml, an optional override file, then environment variables.

Every key is reachable as ``MEMESYS_<SECTION>_<KEY>``; values from the environment are parsed
to the type of the default so a typo fails loudly at start-up instead of deep in a worker.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "config" / "default.toml"

# Well-known variables that keep their usual names.
_ALIASES = {
    "OPENAI_API_KEY": ("llm", "api_key"),
    "OPENAI_BASE_URL": ("llm", "base_url"),
    "REDIS_URL": ("redis", "url"),
}


# Settings that take one of a few words.
_CHOICES = {("pipeline", "mode"): ("parallel", "sequential")}


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def _coerce(raw: str, default: Any, name: str) -> Any:
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r}: expected a boolean")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected {type(default).__name__}") from None
    return raw


def _merge(base: dict, override: Mapping, origin: str) -> None:
    for section, values in override.items():
        if section not in base or not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: unknown section [{section}]")
        for key, value in values.items():
            if key not in base[section]:
                raise ConfigError(f"{origin}: unknown key {section}.{key}")
            default = base[section][key]
            if type(value) is not type(default) and not (
                isinstance(default, float) and isinstance(value, int)
            ):
                raise ConfigError(f"{origin}: {section}.{key} must be {type(default).__name__}")
            base[section][key] = type(default)(value)


def load(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> dict:
    """Return the merged configuration as ``{section: {key: value}}``."""
    env = os.environ if env is None else env
    with open(DEFAULT_FILE, "rb") as f:
        cfg = tomllib.load(f)
    if path:
        with open(path, "rb") as f:
            _merge(cfg, tomllib.load(f), str(path))
    for section, values in cfg.items():
        for key, default in values.items():
            name = f"MEMESYS_{section}_{key}".upper()
            if name in env:
                values[key] = _coerce(env[name], default, name)
    for name, (section, key) in _ALIASES.items():
        if env.get(name):
            cfg[section][key] = env[name]
    for (section, key), allowed in _CHOICES.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(f"{section}.{key} = {cfg[section][key]!r}: expected one of "
                              f"{', '.join(allowed)}")
    return cfg
