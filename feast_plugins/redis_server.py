"""The Redis a command uses: the one the user named, or a throwaway `redis-server`.

Commands that need the online store call `redis_for_feast()`. When the user names a Redis
(REDIS_URL, or Feast's connection string in SKEWLESS_REDIS), that Redis is used and nothing
else: if it does not answer, `skewless materialize` fails with one line and `skewless serve`
starts not ready (its /ready says why) and recovers when the Redis answers. Replacing it with
an empty one would be a silent wrong answer: a readiness probe would send traffic to a service
that knows no customer. Only when no Redis is named (the demo, the tests) is a private server
started on a free loopback port; it keeps nothing on disk and is stopped on every way out: a
normal exit, an error, Ctrl-C, SIGTERM (what systemd, Docker and Kubernetes send), and, through
the kernel's parent-death signal, even a SIGKILL of the command. Either way SKEWLESS_REDIS, the
variable `feature_repo/feature_store.yaml` reads, is exported so Feast talks to the same server.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlparse

import redis

from skewless.paths import REDIS_ENV

INSTALL_HINT = "install Redis (Debian/Ubuntu: `apt-get install redis-server`, macOS: `brew install redis`) or set REDIS_URL"


class RedisUnavailable(RuntimeError):
    """No Redis answered and none could be started."""


# TLS settings as Feast's connection string and redis-py name them; REDIS_URL query parameters too
TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


class RedisRefused(RedisUnavailable):
    """The Redis answers but refuses to serve: wrong credentials (password, ACL user) or no such db; not transient."""


@dataclass(frozen=True)
class RedisEndpoint:
    """Where the online store is and how to log in: host, port, db, ACL user and password, TLS.

    Two spellings: `REDIS_URL` (`redis://[user:password@]host:port/db`, `rediss://` for TLS, with
    `?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...`) and Feast's connection string in
    SKEWLESS_REDIS (`host:port,db=0,username=...,password=...,ssl=true,ssl_ca_certs=...`), which
    Feast hands to redis-py as keyword arguments. `repr` and every message show host and port
    only: a password is never printed.
    """

    host: str
    port: int
    db: int = 0
    password: str | None = field(default=None, repr=False)
    throwaway: bool = False  # started by this process (nobody named a Redis): empty, and gone when it exits
    username: str | None = None
    tls: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "RedisEndpoint":
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss") or not parsed.netloc:
            raise RedisUnavailable("REDIS_URL must look like redis://[user:password@]host:port/db or rediss://... for TLS "
                                   f"(got {'scheme ' + repr(parsed.scheme) if parsed.scheme else 'no redis:// scheme'})")
        try:
            db = int(parsed.path.lstrip("/") or 0)
            port = parsed.port or 6379
        except ValueError:
            raise RedisUnavailable("REDIS_URL: the port (1..65535) and the db must be numbers, as in redis://host:6379/0") from None
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = sorted(set(query) - set(TLS_FILES))
        if unknown:
            raise RedisUnavailable(f"REDIS_URL: unknown parameter(s) {', '.join(unknown)} (known: {', '.join(TLS_FILES)})")
        return cls(parsed.hostname or "127.0.0.1", port, db, unquote(parsed.password) if parsed.password else None,
                   username=unquote(parsed.username) if parsed.username else None, tls=parsed.scheme == "rediss",
                   **{k: query.get(k) for k in TLS_FILES})

    @classmethod
    def from_feast(cls, conn: str) -> "RedisEndpoint":
        """Parse Feast's `host:port,db=0,username=...,password=...,ssl=true,...` connection string."""
        head, *params = conn.split(",")
        host, _, port = head.partition(":")
        kv = dict(p.split("=", 1) for p in params if "=" in p)
        try:
            port_no, db = int(port or 6379), int(kv.get("db", 0))
        except ValueError:
            raise RedisUnavailable(f"{REDIS_ENV} must look like host:port,db=0[,username=...,password=...,ssl=true]: "
                                   "the port and the db must be numbers") from None
        return cls(host or "127.0.0.1", port_no, db, kv.get("password"), username=kv.get("username"),
                   tls=kv.get("ssl", "false").lower() == "true", **{k: kv.get(k) for k in TLS_FILES})

    @property
    def url(self) -> str:
        user = quote(self.username or "", safe="")
        auth = f"{user}:{quote(self.password, safe='')}@" if self.password else (f"{user}@" if user else "")
        files = "&".join(f"{k}={quote(v)}" for k in TLS_FILES if (v := getattr(self, k)))
        return f"{'rediss' if self.tls else 'redis'}://{auth}{self.host}:{self.port}/{self.db}" + (f"?{files}" if files else "")

    @property
    def feast(self) -> str:
        """Feast's connection-string form of this endpoint (a `,` in a password cannot be said in it)."""
        if self.password and "," in self.password:
            raise RedisUnavailable("the Redis password contains ',', which Feast's connection string cannot carry: change the password")
        extra = [f"{k}={v}" for k, v in (("username", self.username), ("password", self.password)) if v]
        if self.tls:
            extra.append("ssl=true")
            extra += [f"{k}={getattr(self, k)}" for k in TLS_FILES if getattr(self, k)]
        return ",".join([f"{self.host}:{self.port}", f"db={self.db}", *extra])

    @property
    def where(self) -> str:
        """host:port for messages, with `tls` when it is; never a credential."""
        return f"{self.host}:{self.port}" + (" (tls)" if self.tls else "")

    def client(self, timeout: float = 1.0) -> redis.Redis:
        tls = {"ssl": True, **{k: getattr(self, k) for k in TLS_FILES if getattr(self, k)}} if self.tls else {}
        return redis.Redis(host=self.host, port=self.port, db=self.db, username=self.username, password=self.password,
                           socket_timeout=timeout, socket_connect_timeout=timeout, **tls)

    def ping(self) -> bool:
        """Whether it answers now: one try (redis-py's default retries would take ~8 s to say no)."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = self.client(timeout=0.5)
        client.set_retry(Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())
        except RedisRefused:
            raise
        except redis.AuthenticationError:
            raise RedisRefused(f"redis {self.where} refused the credentials (named by {configured_by()}): "
                                  "check the user and password") from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "NOPERM" in str(exc):
                raise RedisRefused(f"redis {self.where} needs other credentials (named by {configured_by()}): "
                                      f"{str(exc).split('.')[0]}") from None
            if "DB index" in str(exc):  # answers, but has no such db: not transient either
                raise RedisRefused(f"redis {self.where} has no db {self.db} (named by {configured_by()}): it has `databases` "
                                      "of them (16 by default), numbered from 0") from None
            return False
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


def store_client(store) -> redis.Redis:
    """The redis-py client inside a FeatureStore's Redis online store (Feast's own connection settings)."""
    return store._get_provider().online_store._get_client(store.config.online_store)


def configured_by() -> str:
    """Which variable named the Redis in use (for messages)."""
    return "REDIS_URL" if os.environ.get("REDIS_URL") else REDIS_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: ask the kernel for SIGTERM when the parent dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own cleanup still stops it


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Inside the block, SIGTERM raises SystemExit(143) in the main thread, so `finally` clauses
    (stopping a throwaway Redis, removing its directory) run as they do for Ctrl-C.

    Servers that handle SIGTERM themselves (uvicorn) put their handler in place while they run
    and, when they are done, raise the signal again under this one; a handler someone else set
    before is left alone.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def throwaway_redis(port: int | None = None) -> Iterator[RedisEndpoint]:
    """A private `redis-server` on 127.0.0.1 that keeps nothing on disk; stopped on every exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisUnavailable(f"no Redis named and redis-server is not installed: {INSTALL_HINT}")
    port = port or free_port()
    with sigterm_unwinds():
        workdir = tempfile.mkdtemp(prefix="skewless-redis-")
        try:
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", workdir, "--protected-mode", "yes"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        endpoint = RedisEndpoint("127.0.0.1", port, throwaway=True)
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
                proc.wait()
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def redis_for_feast(must_answer: bool = True) -> Iterator[RedisEndpoint]:
    """The Redis the user named, or a throwaway one when none is named; exported for Feast meanwhile.

    A named Redis that does not answer raises RedisUnavailable (one line, no secret in it) when
    `must_answer`; otherwise it is used as it is, for a service that waits for it.
    """
    endpoint = configured_endpoint()
    with contextlib.ExitStack() as stack:
        if endpoint is None:
            endpoint = stack.enter_context(throwaway_redis())
        elif must_answer and not endpoint.ping():
            raise RedisUnavailable(
                f"redis {endpoint.where} (named by {configured_by()}) does not answer: "
                f"start it, fix {configured_by()}, or unset it to use a throwaway redis-server"
            )
        previous = os.environ.get(REDIS_ENV)
        os.environ[REDIS_ENV] = endpoint.feast
        try:
            yield endpoint
        finally:
            if previous is None:
                os.environ.pop(REDIS_ENV, None)
            else:
                os.environ[REDIS_ENV] = previous
