"""bench.ab's pure helpers: the metrics parser, the split check, the targets' exit code."""

from __future__ import annotations

import math

from bench.ab import (
    Target,
    critical_path,
    critical_path_ms,
    exit_code,
    metric_sum,
    parse_metrics,
    split_ok,
    split_share,
)
from memesys.config import load

METRICS = """\
# HELP memesys_memes_total memes answered by an engine
# TYPE memesys_memes_total counter
memesys_memes_total{cached="false",engine="actors"} 700
memesys_memes_total{engine="inprocess",cached="false"} 300.0
memesys_memes_total{cached="true",engine="actors"} 5
memesys_cache_hits_total 42
memesys_meme_seconds_bucket{engine="actors",cached="false",le="+Inf"} 700
"""


def test_parse_and_sum_by_label_in_any_order() -> None:
    samples = parse_metrics(METRICS)
    assert metric_sum(samples, "memesys_memes_total", engine="actors", cached="false") == 700
    assert metric_sum(samples, "memesys_memes_total", engine="inprocess", cached="false") == 300
    assert metric_sum(samples, "memesys_memes_total", cached="true") == 5
    assert metric_sum(samples, "memesys_memes_total") == 1005
    assert metric_sum(samples, "memesys_cache_hits_total") == 42
    assert metric_sum(samples, "memesys_meme_seconds_bucket", le="+Inf") == 700
    assert metric_sum(samples, "absent") == 0


def test_split_share_and_tolerance() -> None:
    assert split_share({"actors": 700, "inprocess": 300}) == 0.3
    assert math.isnan(split_share({}))
    assert split_ok(0.3) and split_ok(0.285) and split_ok(0.315)
    assert not split_ok(0.284) and not split_ok(0.316) and not split_ok(float("nan"))


def test_the_critical_path_follows_the_configured_pipeline() -> None:
    fused = critical_path(load(env={}).pipeline)  # the packaged defaults
    assert fused == ("select_write", "judging group")
    assert critical_path_ms(0.1, len(fused)) == 200
    for apart in (
        {"MEMESYS_PIPELINE_FUSE_SELECT_WRITE": "false"},
        {"MEMESYS_PIPELINE_MODE": "sequential"},
    ):
        path = critical_path(load(env=apart).pipeline)
        assert path == ("select", "write", "judging group")
        assert critical_path_ms(0.1, len(path)) == 300


def test_exit_code_fails_on_a_failed_or_unmeasured_target_or_part() -> None:
    ok = Target("a", "1", True)
    assert exit_code([ok], []) == 0
    assert exit_code([ok, Target("b", "2", False)], []) == 1
    assert exit_code([ok, Target("c", "n/a", None)], []) == 1
    assert exit_code([ok], ["3. cached memes"]) == 1
    assert "FAIL" in Target("c", "n/a", None).line()
    assert Target("a", "1", True).line().endswith("PASS")
