"""Process-wide settings are made once, at the entry points, never as an import side effect."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The daemon (production), the benchmarks' processes and the test session (conftest).
ENTRY_POINTS = {
    "memesys/cli/daemon.py",
    "bench/run.py",
    "bench/server.py",
    "bench/pipeline.py",
    "bench/llm.py",
    "bench/provider.py",
    "bench/telemetry.py",
    "bench/profile_stage_call.py",
    "tests/conftest.py",
}


SETTER = 'environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP"'


def test_the_litellm_cost_map_switch_is_set_only_at_entry_points() -> None:
    setters = {
        str(path.relative_to(ROOT))
        for folder in ("memesys", "actors", "bench", "tests")
        for path in (ROOT / folder).rglob("*.py")
        if SETTER in path.read_text() and path != Path(__file__)
    }
    assert setters == ENTRY_POINTS
