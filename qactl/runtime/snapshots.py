"""The score job's saved state on disk: savepoints `qactl down` took, checkpoints Flink retained.

``savepoints_dir/savepoint-<id>/_metadata`` and ``checkpoints_dir/<job id>/chk-<n>/_metadata``
(flink.py's ``cluster_config``). `qactl up` resumes from the newest one: whichever the job wrote
last holds the state it had last. A snapshot that failed to restore gets a marker file and is
never offered again.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from qactl.runtime import flink
from services.common.settings import QactlSettings

METADATA = "_metadata"
UNRESTORABLE = "_qactl_unrestorable"


@dataclass(frozen=True)
class Snapshot:
    kind: str  # "savepoint" or "checkpoint"
    path: Path  # the directory holding _metadata, as `flink run -s` takes it
    written_at: float  # mtime of _metadata

    def describe(self) -> str:
        return f"{self.kind} {self.path}"

    @property
    def short_name(self) -> str:
        """``savepoint-<id>`` or ``<job id prefix>/chk-<n>``: enough to find it in the state dir."""
        return self.path.name if self.kind == "savepoint" else f"{self.path.parent.name[:8]}/{self.path.name}"


def snapshots(settings: QactlSettings) -> list[Snapshot]:
    """Every restorable snapshot, newest first."""
    found = [
        *_complete(flink.savepoints_dir(settings).glob(f"*/{METADATA}"), "savepoint"),
        *_complete(flink.checkpoints_dir(settings).glob(f"*/chk-*/{METADATA}"), "checkpoint"),
    ]
    return sorted(found, key=lambda s: s.written_at, reverse=True)


def newest(settings: QactlSettings) -> Snapshot | None:
    found = snapshots(settings)
    return found[0] if found else None


def mark_unrestorable(snapshot: Snapshot, reason: str) -> None:
    (snapshot.path / UNRESTORABLE).write_text(reason + "\n")


def prune_older_than(settings: QactlSettings, keep: Snapshot) -> None:
    """Remove the savepoints and checkpoint directories older than ``keep``: it supersedes them.

    A job restored from ``keep`` does not claim it (Flink's NO_CLAIM), so ``keep`` itself stays
    until a newer snapshot supersedes it in turn.
    """
    for directory in flink.savepoints_dir(settings).glob("*"):
        if directory.is_dir() and directory != keep.path and _newest_mtime(directory) < keep.written_at:
            shutil.rmtree(directory, ignore_errors=True)
    for job_dir in flink.checkpoints_dir(settings).glob("*"):
        if job_dir.is_dir() and keep.path.parent != job_dir and _newest_mtime(job_dir) < keep.written_at:
            shutil.rmtree(job_dir, ignore_errors=True)


def _complete(metadata_files, kind: str) -> list[Snapshot]:
    found = []
    for metadata in metadata_files:
        try:
            if (metadata.parent / UNRESTORABLE).exists():
                continue
            found.append(Snapshot(kind, metadata.parent, metadata.stat().st_mtime))
        except OSError:
            continue  # removed meanwhile (Flink subsumes checkpoints)
    return found


def _newest_mtime(directory: Path) -> float:
    try:
        return max([p.stat().st_mtime for p in directory.rglob("*")] + [directory.stat().st_mtime])
    except OSError:
        return 0.0
