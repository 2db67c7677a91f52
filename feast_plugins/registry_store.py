"""Feast's file registry, found from any working directory and replaced atomically.

`feature_store.yaml` names this class (`registry_store_type`), so every way of opening the repo
uses it: `FeatureStore(repo_path=...)` in a notebook or an Airflow task, `feast -c feature_repo`,
`cd feature_repo && feast ...`, `feast serve`, and every skewless command.

Why not Feast's SQL registry on SQLite, which this repo used before: its URL
(`sqlite:///data/registry.db`) is resolved by SQLAlchemy against the process's working
directory, so from anywhere but `feature_repo/` Feast silently opened (and created) another,
empty registry. A file registry's relative path is resolved against the repo (Feast's
`FileRegistryStore`), which is the one place every entry point agrees on.

What this adds to Feast's `FileRegistryStore`:

- atomic replacement: Feast rewrites the file in place, so a reader (the service starting, a
  batch run) could parse a half-written registry. Here the new registry is written to a
  temporary file beside it, fsynced and renamed over it: a reader sees the old or the new one.
- no lost update: a writer based its change on the version it read (`version_id`); if another
  process replaced the registry since (a `feast apply` during a long `feast materialize`), the
  write is refused with one line instead of silently dropping the other's change. Writers
  take an exclusive lock on the directory while they compare and rename.
- no empty registry out of nothing: opening a repo that was never applied reads as an empty
  registry (so `feast feature-services list` shows nothing and skewless says "run `skewless
  apply`"), but no file is created until something is applied.

And one fix to Feast itself, applied when this module loads (so in every process that opens
the repo, the stock CLI included): Feast 0.67's `feast registry-dump` raises KeyError
'substraitPlan' on a python-mode on-demand view (see `_dump_python_mode_views`).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import uuid
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

from feast.infra.registry.base_registry import BaseRegistry
from feast.infra.registry.file import FileRegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.utils import _utc_now

CLASS_PATH = "feast_plugins.registry_store.AtomicFileRegistryStore"


class RegistryConflict(RuntimeError):
    """Another process replaced the registry after this one read it."""


class AtomicFileRegistryStore(FileRegistryStore):
    """Feast's file registry store with atomic, conflict-checked writes (see the module docstring)."""

    def get_registry_proto(self) -> RegistryProto:
        proto = RegistryProto()
        try:
            proto.ParseFromString(self._filepath.read_bytes())
        except FileNotFoundError:
            pass  # never applied: an empty registry, and no file made for it
        return proto

    def update_registry_proto(self, registry_proto: RegistryProto) -> None:
        if not self._filepath.exists() and not _has_objects(registry_proto):
            return  # Feast commits an empty registry when it finds none: keep the repo clean
        self._write_registry(registry_proto)

    def _write_registry(self, registry_proto: RegistryProto) -> None:
        directory = self._filepath.parent
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory):
            current = self.get_registry_proto()
            if current.version_id and registry_proto.version_id and current.version_id != registry_proto.version_id:
                raise RegistryConflict(
                    f"the Feast registry {self._filepath} was changed by another process while this one ran "
                    "(a concurrent `feast apply` or materialization): nothing was written; run the command again"
                )
            registry_proto.version_id = str(uuid.uuid4())
            registry_proto.last_updated.FromDatetime(_utc_now())
            fd, tmp = tempfile.mkstemp(prefix=f".{self._filepath.name}.", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), _file_mode(self._filepath))
                    f.write(registry_proto.SerializeToString())
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._filepath)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(directory)

    def teardown(self) -> None:
        with _locked(self._filepath.parent):
            self._filepath.unlink(missing_ok=True)


def _file_mode(path: Path) -> int:
    """The registry's permissions: as they are, or the usual 0o666 less the umask for a new one."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _has_objects(proto: RegistryProto) -> bool:
    return any(len(getattr(proto, name)) for name in ("projects", "entities", "feature_views", "feature_services", "data_sources",
                                                      "on_demand_feature_views", "stream_feature_views"))


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on the registry's directory (no lock file to leave behind)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dump_python_mode_views() -> None:
    """Make `feast registry-dump` (BaseRegistry.to_dict) work on python-mode on-demand views.

    Its last branch, reached by a PythonTransformation, sets the body of both
    `spec.featureTransformation.userDefinedFunction` and `.substraitPlan`, but a python view's
    proto holds only the first, so it raises KeyError. The proto's dict gets the empty
    `substraitPlan` it expects (dumped as `{"body": null}`, as Feast means to); nothing else
    changes and nothing is written. Remove once Feast handles python mode there."""
    original = BaseRegistry._message_to_sorted_dict
    if getattr(original, "skewless_fix", False):
        return

    def sorted_dict(message):
        out = original(message)
        spec = out.get("spec") if message.DESCRIPTOR.name == "OnDemandFeatureView" else None
        transformation = spec.get("featureTransformation") if isinstance(spec, dict) and spec.get("mode") == "python" else None
        if isinstance(transformation, dict) and "userDefinedFunction" in transformation:
            transformation.setdefault("substraitPlan", {})
        return out

    sorted_dict.skewless_fix = True
    BaseRegistry._message_to_sorted_dict = staticmethod(sorted_dict)


_dump_python_mode_views()
