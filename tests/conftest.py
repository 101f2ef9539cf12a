"""Registers the shared fixtures of tests/support as pytest plugins (see its package doc)."""

from __future__ import annotations

import os

# The one place the tests set it: DSPy must never try to download LiteLLM's model cost map
# (no network here); every daemon, fake server and actor the tests start inherits it.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# A module that defines a fixture of the same name overrides the plugin's.
pytest_plugins = [
    "tests.support.actor_system",
    "tests.support.redis_server",
    "tests.support.provider",
    "tests.support.llm",
    "tests.support.tokens",
]
