"""Find a reachable Redis, or start a throwaway `redis-server` on a free loopback port.

Commands that need the online store call `redis_for_feast()`: it uses REDIS_URL (or Feast's
connection string in SKEWLESS_REDIS) when that answers, otherwise starts a private server that
keeps nothing on disk and stops it afterwards. Either way it exports SKEWLESS_REDIS, the
variable `feature_repo/feature_store.yaml` reads, so Feast talks to the same server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import redis

from training.store import REDIS_ENV

INSTALL_HINT = "install Redis (Debian/Ubuntu: `apt-get install redis-server`, macOS: `brew install redis`) or set REDIS_URL"


class RedisUnavailable(RuntimeError):
    """No Redis answered and none could be started."""


@dataclass(frozen=True)
class RedisEndpoint:
    host: str
    port: int
    db: int = 0
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "RedisEndpoint":
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", ""):
            raise RedisUnavailable(f"REDIS_URL must look like redis://host:port/db, got {url!r}")
        db = int(parsed.path.lstrip("/") or 0)
        return cls(parsed.hostname or "127.0.0.1", parsed.port or 6379, db, parsed.password)

    @classmethod
    def from_feast(cls, conn: str) -> "RedisEndpoint":
        """Parse Feast's `host:port,db=0,password=...` connection string."""
        head, *params = conn.split(",")
        host, _, port = head.partition(":")
        kv = dict(p.split("=", 1) for p in params if "=" in p)
        return cls(host or "127.0.0.1", int(port or 6379), int(kv.get("db", 0)), kv.get("password"))

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"

    @property
    def feast(self) -> str:
        """Feast's connection-string form of this endpoint."""
        extra = f",password={self.password}" if self.password else ""
        return f"{self.host}:{self.port},db={self.db}{extra}"

    def client(self, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )

    def ping(self) -> bool:
        try:
            return bool(self.client(timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False


def configured_endpoint() -> RedisEndpoint | None:
    """The endpoint the environment asks for: REDIS_URL, else SKEWLESS_REDIS, else none.

    No silent fallback to localhost:6379: a Redis that happens to run there may hold another
    checkout's keys under the same Feast project, and mixing them is exactly the skew this
    project exists to prevent.
    """
    if os.environ.get("REDIS_URL"):
        return RedisEndpoint.from_url(os.environ["REDIS_URL"])
    if os.environ.get(REDIS_ENV):
        return RedisEndpoint.from_feast(os.environ[REDIS_ENV])
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_redis(port: int | None = None) -> Iterator[RedisEndpoint]:
    """A private `redis-server` on 127.0.0.1 that keeps nothing on disk; stopped on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisUnavailable(f"no Redis reachable and redis-server is not installed: {INSTALL_HINT}")
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="skewless-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = RedisEndpoint("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 10
        while not endpoint.ping():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RedisUnavailable(f"redis-server did not start on 127.0.0.1:{port}")
            time.sleep(0.02)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def redis_for_feast() -> Iterator[RedisEndpoint]:
    """The configured Redis if it answers, else a throwaway one; exported for Feast meanwhile."""
    endpoint = configured_endpoint()
    with contextlib.ExitStack() as stack:
        if endpoint is None or not endpoint.ping():
            if endpoint is not None:
                print(f"redis {endpoint.host}:{endpoint.port} does not answer: using a throwaway redis-server", file=sys.stderr)
            endpoint = stack.enter_context(throwaway_redis())
        previous = os.environ.get(REDIS_ENV)
        os.environ[REDIS_ENV] = endpoint.feast
        try:
            yield endpoint
        finally:
            if previous is None:
                os.environ.pop(REDIS_ENV, None)
            else:
                os.environ[REDIS_ENV] = previous
