"""What a 201 promises (issue 17, item 5): on the embedded server, what storage.durability
configures; on a configured Redis (REDIS_URL), what its own appendonly/appendfsync give, said
at start, with a WARNING when that is less than storage.durability asks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from memesys.storage.connection import EmbeddedRedis, connect
from memesys.storage.durability import promise, report

pytestmark = pytest.mark.store


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of an embedded server of the test's own, with ``storage.durability`` the
    test's parameter."""
    embedded = EmbeddedRedis(str(tmp_path / "redis"), durability=request.param)
    yield embedded.start().url
    embedded.stop()


def test_what_each_setting_promises() -> None:
    assert promise({"appendonly": "yes", "appendfsync": "always"}) == "fsync"
    assert promise({"appendonly": "yes", "appendfsync": "everysec"}) == "memory"
    assert promise({"appendonly": "yes", "appendfsync": "no"}) == "memory"
    assert promise({"appendonly": "no", "appendfsync": "always"}) == "snapshot"


@pytest.mark.parametrize("server", ["fsync"], indirect=True)
def test_the_embedded_server_fsyncs_before_it_answers_by_default(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert connect(server).config_get("appendfsync") == {"appendfsync": "always"}
    with caplog.at_level(logging.INFO, "memesys.storage.durability"):
        assert report(server, "fsync") == "fsync"
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "a 201 means the write is on its disk" in caplog.text


@pytest.mark.parametrize("server", ["memory"], indirect=True)
def test_a_redis_that_promises_less_is_a_warning_naming_it(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "memesys.storage.durability"):
        assert report(server, "memory") == "memory"  # as asked: no warning
        assert report(server, "fsync") == "memory"
        connect(server).config_set("appendonly", "no")
        assert report(server, "memory") == "snapshot"
    levels = [r.levelname for r in caplog.records]
    assert levels == ["INFO", "WARNING", "WARNING"], caplog.text
    warned = caplog.records[1].getMessage()
    assert "storage.durability = fsync" in warned and "appendfsync everysec" in warned
    assert "a power cut or a kernel crash can lose the memes answered last" in warned
    assert "on disk only at its next RDB snapshot" in caplog.records[2].getMessage()


def test_settings_that_cannot_be_read_are_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "memesys.storage.durability"):
        assert report(f"unix://{tmp_path / 'none.sock'}", "fsync") == "unknown"
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "cannot be read" in caplog.text
