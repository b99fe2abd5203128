"""Which saved state `qactl up` resumes the score job from, on directories laid out as Flink writes them."""

from __future__ import annotations

import os
from pathlib import Path

from qactl.runtime import flink, snapshots
from services.common.settings import load_settings


def _write(directory: Path, at: float) -> Path:
    directory.mkdir(parents=True)
    metadata = directory / snapshots.METADATA
    metadata.write_bytes(b"x")
    os.utime(metadata, (at, at))
    for each in (directory, directory.parent):
        os.utime(each, (at, at))
    return directory


def test_the_newest_snapshot_wins_whether_savepoint_or_checkpoint(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    savepoint = _write(flink.savepoints_dir(settings) / "savepoint-abc123-0001", at=1000)
    checkpoint = _write(flink.checkpoints_dir(settings) / ("a" * 32) / "chk-7", at=2000)
    (flink.checkpoints_dir(settings) / ("b" * 32) / "chk-3").mkdir(parents=True)  # no _metadata: incomplete
    assert snapshots.newest(settings) == snapshots.Snapshot("checkpoint", checkpoint, 2000)
    os.utime(savepoint / snapshots.METADATA, (3000, 3000))
    assert snapshots.newest(settings).path == savepoint


def test_a_snapshot_that_failed_to_restore_is_not_offered_again(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    older = _write(flink.savepoints_dir(settings) / "savepoint-old", at=1000)
    newer = _write(flink.savepoints_dir(settings) / "savepoint-new", at=2000)
    snapshots.mark_unrestorable(snapshots.newest(settings), "corrupt")
    assert snapshots.newest(settings).path == older
    assert (newer / snapshots.UNRESTORABLE).read_text() == "corrupt\n"


def test_resuming_from_one_prunes_what_it_supersedes(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    old_savepoint = _write(flink.savepoints_dir(settings) / "savepoint-old", at=1000)
    old_job = _write(flink.checkpoints_dir(settings) / "old-job" / "chk-1", at=1500).parent
    kept = _write(flink.checkpoints_dir(settings) / "new-job" / "chk-9", at=2000)
    snapshots.prune_older_than(settings, snapshots.newest(settings))
    assert kept.exists() and not old_savepoint.exists() and not old_job.exists()
