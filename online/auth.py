"""API keys: who may call /predict* and /scores* (and /metrics when asked).

Keys are bearer tokens (`Authorization: Bearer <key>`). Several are valid at once, so a key is
rotated by adding the new one, moving callers over, then removing the old one. They come from
`SKEWLESS_API_KEYS` (comma-separated keys) and/or `SKEWLESS_API_KEYS_FILE`, a file of SHA-256
digests, one `sha256:<hex>` a line (`skewless api-key --file F` adds one and prints the key
once), so the disk never holds a key. The file is re-read when it changes, so rotating a key
needs no restart.

A presented key is hashed and compared with every stored digest by `hmac.compare_digest`,
without stopping at the first match: the time taken says nothing about which bytes matched.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from pathlib import Path

PREFIX = "sha256:"
RECHECK_S = 1.0  # how often the key file's mtime is looked at


class KeyFileError(ValueError):
    """The key file is missing, unreadable or has a line that is not `sha256:<64 hex>`."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def file_line(key: str) -> str:
    """What the key file stores for `key`."""
    return PREFIX + digest(key).hex()


def read_key_file(path: Path) -> list[bytes]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeyFileError(f"API key file {path}: {exc.strerror or exc} (SKEWLESS_API_KEYS_FILE)") from None
    digests = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        hexpart = line[len(PREFIX):] if line.startswith(PREFIX) else ""
        try:
            value = bytes.fromhex(hexpart)
        except ValueError:
            value = b""
        if len(value) != 32:
            # never repeat the line: it could be a key pasted in by mistake
            raise KeyFileError(f"API key file {path}, line {n}: not `sha256:<64 hex digits>` (the file stores digests; "
                               "`skewless api-key --file FILE` adds one)")
        digests.append(value)
    return digests


class ApiKeys:
    """The valid keys' digests: from the environment (fixed) and the file (re-read on change)."""

    def __init__(self, keys: str | None = None, file: Path | None = None):
        self.fixed = [digest(k.strip()) for k in (keys or "").split(",") if k.strip()]
        self.file = file
        self._file_digests: list[bytes] = []
        self._mtime: float | None = None
        self._checked = 0.0
        if file is not None:
            self._reload(force=True)

    @property
    def configured(self) -> bool:
        return bool(self.fixed) or self.file is not None

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RECHECK_S:
            return
        self._checked = now
        try:
            mtime = os.stat(self.file).st_mtime_ns
        except OSError:
            if force:
                raise KeyFileError(f"API key file {self.file}: no such file (SKEWLESS_API_KEYS_FILE)") from None
            return  # gone mid-rotation (a rename in progress): keep the last good set
        if force or mtime != self._mtime:
            try:
                self._file_digests = read_key_file(self.file)
            except KeyFileError:
                if force:
                    raise
                return  # a half-edited file: keep the last good set until it parses
            self._mtime = mtime

    def allows(self, presented: str | None) -> bool:
        if presented is None:
            return False
        if self.file is not None:
            self._reload()
        d = digest(presented)
        ok = False
        for stored in self.fixed + self._file_digests:
            ok |= hmac.compare_digest(d, stored)  # every digest compared: no early exit
        return ok


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


def new_key() -> str:
    return "sk_" + secrets.token_urlsafe(32)


def add_to_file(path: Path, key: str, note: str) -> None:
    """Append the key's digest line to the file, atomically (a temp file, then rename)."""
    existing = path.read_text() if path.exists() else "# skewless API keys: SHA-256 digests, one a line (online/auth.py)\n"
    if existing and not existing.endswith("\n"):
        existing += "\n"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(existing + f"{file_line(key)}  # {note}\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
