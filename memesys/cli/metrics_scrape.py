"""One bounded scrape of a daemon's ``GET /metrics``, parsed.

``memesys-admin stats`` reads the live figures where Prometheus does, so the two never
disagree. Where: the configured gateway (``gateway.host``, ``gateway.port``; a wildcard host is
asked on loopback), or ``--url``; with ``gateway.auth = "required"`` a token (``--token`` or
``MEMESYS_TOKEN``).
"""

from __future__ import annotations

import http.client
import ipaddress
import urllib.error
import urllib.parse
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from memesys.cli.live_figures import Samples, samples_of
from memesys.config import GatewayConfig

TIMEOUT_S = 3.0
MAX_BYTES = 8 * 1024 * 1024  # a scrape is ~20 KB; a larger answer is not the daemon's


READ_MARK = "memesys_tree_status_read"  # in every scrape of a daemon


class ScrapeError(RuntimeError):
    """The daemon's /metrics could not be read: why, for a person."""


def gateway_url(gateway: GatewayConfig) -> str:
    """The configured gateway's base URL; a wildcard host (``0.0.0.0``, ``::``) on loopback."""
    host = gateway.host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{gateway.port}"
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{shown}:{gateway.port}"


def scrape(base_url: str, token: str | None, timeout_s: float = TIMEOUT_S) -> Samples:
    """The samples of ``<base_url>/metrics``, read within ``timeout_s``."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ScrapeError(f"the gateway's URL must be http(s)://HOST:PORT, not {base_url!r}")
    url = base_url.rstrip("/") + "/metrics"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # No proxy from the environment: the daemon is asked directly.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
            body = resp.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            why = "refused the token" if token else "wants a token (--token or MEMESYS_TOKEN)"
            raise ScrapeError(f"{url} answered 401: the gateway {why}") from None
        raise ScrapeError(f"{url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise ScrapeError(
            f"no daemon answered at {url} within {timeout_s:g} s ({reason}); "
            "is it running, and on this address (--url)?"
        ) from None
    if len(body) > MAX_BYTES:
        raise ScrapeError(f"{url} answered more than {MAX_BYTES} bytes: not a daemon's metrics")
    try:
        samples = samples_of(text_string_to_metric_families(body.decode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScrapeError(f"{url} did not answer Prometheus text: {exc}") from None
    if READ_MARK not in samples:
        raise ScrapeError(f"{url} answered metrics without {READ_MARK}: not a memesys daemon")
    return samples
