"""Load the configuration: packaged defaults, an optional file, the environment, the command line.

Later sources win: ``default.toml`` shipped in this package, then the ``--config`` file, then
``MEMESYS_<SECTION>_<KEY>`` (and the usual ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``,
``REDIS_URL``), then command-line flags. Every value is checked against its section's
dataclass: an unknown key, a wrong type or an out-of-range value raises ConfigError with one
line naming the key and where the value came from.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any

from memesys.config.capacity import Capacities
from memesys.config.sections import Config

DEFAULTS = "default.toml"

# Well-known variables that keep their usual names (they win over MEMESYS_* for the same key).
ALIASES = {
    "OPENAI_API_KEY": ("llm", "api_key"),
    "OPENAI_BASE_URL": ("llm", "base_url"),
    "REDIS_URL": ("redis", "url"),
}

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def _class_of(fld: dataclasses.Field[Any]) -> type:
    """A field's type, a class (sections.py does not postpone its annotations)."""
    if not isinstance(fld.type, type):
        raise TypeError(f"{fld.name}: its annotation {fld.type!r} is not a class")
    return fld.type


SECTION_TYPES: dict[str, type] = {f.name: _class_of(f) for f in dataclasses.fields(Config)}
SECTIONS: dict[str, dict[str, dataclasses.Field[Any]]] = {
    name: {f.name: f for f in dataclasses.fields(cls)} for name, cls in SECTION_TYPES.items()
}


def _typed(value: Any, kind: str, name: str, origin: str, text: bool) -> Any:
    """``value`` as ``kind`` ("int", "float", "str", "bool"); ``text``: parse it from a string
    (the environment has only strings; a TOML file has types of its own)."""
    if text and kind != "str":
        raw = value.strip()
        try:
            if kind == "bool":
                if raw.lower() not in _TRUE + _FALSE:
                    raise ValueError
                return raw.lower() in _TRUE
            return int(raw) if kind == "int" else float(raw)
        except ValueError:
            raise ConfigError(f"{name} = {value!r} (from {origin}): expected {kind}") from None
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        raise ConfigError(f"{name} = {value!r} (from {origin}): expected {kind}")
    return float(value) if kind == "float" else value


def _checked(section: str, key: str, value: Any, origin: str, text: bool) -> Any:
    name = f"{section}.{key}"
    fld = SECTIONS[section].get(key)
    if fld is None:
        raise ConfigError(f"{name} (from {origin}): unknown key")
    value = _typed(value, _class_of(fld).__name__, name, origin, text)
    meta = fld.metadata
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise ConfigError(f"{name} = {value!r} (from {origin}): out of range {bounds}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(
            f"{name} = {value!r} (from {origin}): expected one of {', '.join(meta['choices'])}"
        )
    return value


class Layers:
    """The raw values with the origin of each, merged source by source."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        self.origins: dict[str, dict[str, str]] = {s: {} for s in SECTIONS}

    def set(self, section: str, key: str, value: Any, origin: str, text: bool = False) -> None:
        if section not in SECTIONS:
            raise ConfigError(f"[{section}] (from {origin}): unknown section")
        self.values[section][key] = _checked(section, key, value, origin, text)
        self.origins[section][key] = origin

    def merge_toml(self, data: Mapping[str, Any], origin: str) -> None:
        for section, values in data.items():
            if not isinstance(values, Mapping):
                raise ConfigError(f"{section} (from {origin}): expected a [section] table")
            for key, value in values.items():
                self.set(section, key, value, origin)

    def merge_env(self, env: Mapping[str, str]) -> None:
        """MEMESYS_<SECTION>_<KEY> for every known section; an unknown key under a known
        section is an error (a typo must not be ignored). Other MEMESYS_* names are left alone
        (tests and tools use their own)."""
        for name, raw in sorted(env.items()):
            parts = name.split("_", 2)
            if len(parts) == 3 and parts[0] == "MEMESYS" and parts[1].lower() in SECTIONS:
                self.set(parts[1].lower(), parts[2].lower(), raw, f"environment {name}", text=True)
        for name, (section, key) in ALIASES.items():
            if env.get(name):
                self.set(section, key, env[name], f"environment {name}", text=True)

    def build(self) -> Config:
        sections = {}
        for section, fields in SECTIONS.items():
            missing = sorted(set(fields) - set(self.values[section]))
            if missing:
                raise ConfigError(
                    f"{section}.{missing[0]}: no value (the packaged defaults lack it)"
                )
            sections[section] = SECTION_TYPES[section](**self.values[section])
        config = Config(**sections)
        problem = Capacities.of(config).problem()
        if problem:
            raise ConfigError(problem)
        return config


def default_text() -> str:
    """The packaged defaults file, as shipped (comments included)."""
    return resources.files("memesys.config").joinpath(DEFAULTS).read_text(encoding="utf-8")


def load_layers(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Layers:
    layers = Layers()
    layers.merge_toml(tomllib.loads(default_text()), f"packaged {DEFAULTS}")
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        layers.merge_toml(data, str(path))
    layers.merge_env(os.environ if env is None else env)
    for (section, key), value in (overrides or {}).items():
        if value is not None:
            layers.set(section, key, value, f"command line --{key.replace('_', '-')}")
    return layers


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Config:
    """The effective configuration (see the module docstring for the order of sources)."""
    return load_layers(path, env, overrides).build()
