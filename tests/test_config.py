"""Typed configuration: packaged defaults, file, environment and command line, each checked."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from memesys.config import Config, ConfigError, load, load_layers
from memesys.config.loader import SECTIONS, default_text
from memesys.config.printing import masked, render

ROOT = Path(__file__).resolve().parent.parent


def test_packaged_defaults_cover_every_field_and_nothing_else() -> None:
    shipped = tomllib.loads(default_text())
    assert {s: set(v) for s, v in shipped.items()} == {s: set(f) for s, f in SECTIONS.items()}


def test_defaults_load_as_frozen_dataclasses() -> None:
    cfg = load(env={})
    assert isinstance(cfg, Config) and cfg.gateway.port == 8080 and cfg.pipeline.mode == "parallel"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.gateway.port = 1  # type: ignore[misc]


def test_the_repository_copy_is_the_packaged_file() -> None:
    assert (ROOT / "config" / "default.toml").read_text() == default_text()


def test_sources_override_in_order(tmp_path: Path) -> None:
    override = tmp_path / "site.toml"
    override.write_text('[gateway]\nport = 9001\nhost = "0.0.0.0"\n[workers]\ngenerators = 3\n')
    layers = load_layers(
        override,
        env={
            "MEMESYS_GATEWAY_PORT": "9002",
            "MEMESYS_LLM_SCORE_MODEL": "m",
            "REDIS_URL": "redis://127.0.0.1:1/0",
        },
        overrides={("gateway", "port"): 9003, ("system", "data_dir"): None},
    )
    cfg = layers.build()
    assert (cfg.gateway.port, cfg.gateway.host, cfg.workers.generators) == (9003, "0.0.0.0", 3)
    assert cfg.llm.score_model == "m" and cfg.redis.url == "redis://127.0.0.1:1/0"
    assert layers.origins["gateway"]["port"] == "command line --port"
    assert layers.origins["gateway"]["host"] == str(override)
    assert layers.origins["system"]["data_dir"] == "packaged default.toml"


def test_env_values_take_their_field_types() -> None:
    cfg = load(env={"MEMESYS_PIPELINE_STAGE_TIMEOUT_S": "2", "MEMESYS_WORKERS_STORE": " 4 "})
    assert cfg.pipeline.stage_timeout_s == 2.0 and isinstance(cfg.pipeline.stage_timeout_s, float)
    assert cfg.workers.store == 4


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"MEMESYS_GATEWAY_PROT": "1"},
            "gateway.prot (from environment MEMESYS_GATEWAY_PROT): unknown key",
        ),
        (
            {"MEMESYS_GATEWAY_PORT": "eighty"},
            "gateway.port = 'eighty' (from environment MEMESYS_GATEWAY_PORT): expected int",
        ),
        (
            {"MEMESYS_GATEWAY_PORT": "70000"},
            "gateway.port = 70000 (from environment MEMESYS_GATEWAY_PORT): out of range 0..65535",
        ),
        (
            {"MEMESYS_PIPELINE_MODE": "fast"},
            "pipeline.mode = 'fast' (from environment "
            "MEMESYS_PIPELINE_MODE): expected one of parallel, "
            "sequential",
        ),
        ({"MEMESYS_SUPERVISION_BACKOFF_JITTER": "1.5"}, "out of range 0..1"),
    ],
)
def test_bad_environment_values_name_key_and_source(env: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(env=env)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_other_memesys_variables_are_left_alone() -> None:
    load(env={"MEMESYS_TEST_REDIS_URL": "redis://x"})  # not a section: a tool's own variable


@pytest.mark.parametrize(
    "text, message",
    [
        ("[gatway]\nport = 1\n", "[gatway] (from FILE): unknown section"),
        ('[gateway]\nport = "80"\n', "gateway.port = '80' (from FILE): expected int"),
        ("[gateway]\nport = true\n", "gateway.port = True (from FILE): expected int"),
        ("[workers]\ngenerators = 0\n", "workers.generators = 0 (from FILE): out of range 1..256"),
        ("[gateway\n", "FILE: not valid TOML"),
    ],
)
def test_bad_file_values_name_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    assert message.replace("FILE", str(path)) in str(caught.value)


def test_secrets_are_masked() -> None:
    assert masked("") == "" and masked("sk-123") == "***"
    assert masked("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert masked("redis://host:6379/0") == "redis://host:6379/0"
    text = render(
        load_layers(
            env={"OPENAI_API_KEY": "sk-secret", "REDIS_URL": "redis://:hunter2@127.0.0.1:6379/0"}
        )
    )
    assert "sk-secret" not in text and "hunter2" not in text
    assert 'api_key = "***"  # environment OPENAI_API_KEY' in text
    assert tomllib.loads(text)["gateway"]["port"] == 8080  # the output is valid TOML


def test_print_config_and_a_bad_value_at_the_command_line(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "OPENAI_API_KEY": "sk-secret",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    shown = subprocess.run(
        [sys.executable, str(ROOT / "run_system.py"), "--print-config", "--port", "8123"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "port = 8123  # command line --port" in shown.stdout
    assert "sk-secret" not in shown.stdout
    bad = subprocess.run(
        [sys.executable, str(ROOT / "run_system.py")],
        capture_output=True,
        text=True,
        env={**env, "MEMESYS_WORKERS_RENDER": "-1"},
        cwd=tmp_path,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "memesys: configuration error: workers.render = -1 (from "
        "environment MEMESYS_WORKERS_RENDER): out of range 1..256"
    )


def test_the_packaged_tree_stops_within_the_packaged_shutdown_timeout() -> None:
    """Else every start warns that a slow drain may be cut short (the daemon's check)."""
    from actors.spec import shutdown_budget
    from memesys.tree.redis_server import RedisServerArgs
    from memesys.tree.spec import root_spec

    cfg = load_layers(None, env={}).build()
    embedded = root_spec(cfg, "redis://127.0.0.1:1", RedisServerArgs("/nowhere", "/nowhere.sock"))
    assert shutdown_budget(embedded) <= cfg.system.shutdown_timeout_s
