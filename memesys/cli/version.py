"""The installed package's version, for ``--version``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed


def version() -> str:
    """The version pip installed (``pyproject.toml``), or "unknown" from a bare checkout."""
    try:
        return installed("memesys")
    except PackageNotFoundError:
        return "unknown"
