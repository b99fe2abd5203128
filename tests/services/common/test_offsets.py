"""Commit positions when LLM calls finish out of order."""

from services.common.offsets import OffsetTracker

P = ("questions-pending", 0)
Q = ("questions-pending", 1)


def test_out_of_order_completion_never_commits_past_an_unfinished_message() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.started(P, offset)
    tracker.done(P, 12)
    tracker.done(P, 11)
    assert tracker.committable() == {P: 10}  # 10 is still running: everything from 10 is redone
    tracker.done(P, 10)
    assert tracker.committable() == {P: 13}


def test_partitions_are_independent_and_unchanged_positions_are_not_repeated() -> None:
    tracker = OffsetTracker()
    tracker.started(P, 0)
    tracker.started(Q, 5)
    tracker.done(Q, 5)
    positions = tracker.committable()
    assert positions == {P: 0, Q: 6}
    tracker.mark_committed(positions)
    assert tracker.committable() == {}
    assert tracker.committable(only_changed=False) == {P: 0, Q: 6}


def test_nothing_started_means_nothing_to_commit() -> None:
    assert OffsetTracker().committable() == {}


def test_revoked_partition_ignores_late_completions() -> None:
    tracker = OffsetTracker()
    tracker.started(P, 3)
    tracker.forget([P])
    tracker.done(P, 3)
    assert tracker.committable() == {}
    assert tracker.unfinished() == 0
