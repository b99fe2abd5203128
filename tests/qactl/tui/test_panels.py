"""Each panel is a pure function of a snapshot: rendered here without a terminal."""

from __future__ import annotations

from dataclasses import replace

from qactl.dashboard.model import RegenerationOutcomes, histogram, score_edges
from qactl.tui import panels
from tests.qactl.tui.conftest import render_text
from tests.qactl.tui.recorded import T0, recorded_journey, recorded_snapshot


def test_sparkline_scales_to_the_peak_and_keeps_zero_blank():
    assert panels.sparkline([0, 4, 8], 3) == " ▄█"
    assert panels.sparkline([], 4) == "    "
    assert panels.sparkline([1, 2, 3, 4, 5], 2) == "▆█"  # only the latest values fit
    assert panels.sparkline([0.001, 100], 2) == "▁█"  # any traffic is visible


def test_topic_flow_lists_every_topic_with_rate_total_and_sparkline():
    text = render_text(panels.topic_flow(recorded_snapshot(), 78), 78)
    lines = text.splitlines()
    assert len(lines) == 11
    pending = next(line for line in lines if line.startswith("questions-pending"))
    assert "12.0" in pending and "1342" in pending and "█" in pending
    assert any(line.startswith("retry-quota-delay") for line in lines)
    assert max(len(line) for line in lines) <= 78


def test_topic_flow_says_why_kafka_is_missing():
    snap = replace(recorded_snapshot(), topics=(), errors={"kafka": "KafkaException: broker down"})
    assert "broker down" in render_text(panels.topic_flow(snap, 60))


def test_consumer_lag_sums_per_group_and_fits_a_narrow_column():
    text = render_text(panels.consumer_lag(recorded_snapshot(), 36), 36)
    quota = next(line for line in text.splitlines() if line.startswith("retry-quota"))
    assert "250" in quota
    assert max(len(line) for line in text.splitlines()) <= 36


def test_retries_by_type_and_attempt_with_policy_delay_and_demo_note():
    text = render_text(panels.retries(recorded_snapshot(), 40), 40)
    rows = [line.split() for line in text.splitlines()]
    assert ["overload", "2", "200ms", "24"] == rows[2][:4]
    assert ["quota", "all", "3.0s", "12"] == rows[4][:4]
    assert "delays ×0.05" in text


def test_score_histogram_marks_the_threshold_and_counts_above():
    snap = recorded_snapshot()
    text = render_text(panels.score_histogram(snap, 40), 40)
    assert "┃" in text
    assert f"{snap.scores.above}/{snap.scores.total}" in text
    # The marker sits at the same column on every bar row and on the axis.
    columns = {line.index("┃") for line in text.splitlines() if "┃" in line}
    assert len(columns) == 1


def test_score_equal_to_the_threshold_counts_below_it():
    hist = histogram([0.75, 0.76, 0.2], score_edges(0.75), 0.75)
    assert hist.above == 1 and hist.total == 3


def test_regeneration_outcomes_show_share_and_mean_score_per_attempt():
    text = render_text(panels.regeneration_outcomes(recorded_snapshot(), 44), 44)
    first = next(line for line in text.splitlines() if line.startswith("ok 1st"))
    assert first.split()[-3:] == ["880", "86", "0.842"]
    assert "low quality" in text and "failed" in text


def test_regeneration_outcomes_with_nothing_finished():
    snap = replace(recorded_snapshot(), regenerations=RegenerationOutcomes())
    text = render_text(panels.regeneration_outcomes(snap, 44), 44)
    assert "failed" in text and "–" in text


def test_components_mark_the_unhealthy_one():
    text = render_text(panels.components(recorded_snapshot(), 40), 40)
    persister = next(line for line in text.splitlines() if "persister" in line)
    assert persister.startswith("✖") and "no heartbeat" in persister
    assert all(line.startswith("●") for line in text.splitlines() if "kafka" in line)


def test_flink_job_state_checkpoints_and_records():
    text = render_text(panels.flink_jobs(recorded_snapshot(), 40), 40)
    assert text.splitlines()[0].startswith("RUNNING qactl-score")
    assert "118 ok 0 failed" in text
    assert "in 1198" in text and "out 1195" in text


def test_status_line_names_unreachable_parts():
    snap = replace(recorded_snapshot(), errors={"redis": "x", "flink": "y"})
    text = panels.status_line(snap, 1.0).plain
    assert "09:26:53" in text and "unreachable: flink, redis" in text
    assert "PAUSED" in panels.status_line(snap, 1.0, paused=True).plain
    assert "waiting" in panels.status_line(None, 1.0).plain


def test_question_cells_colour_scores_against_the_threshold():
    snap = recorded_snapshot()
    regenerating = snap.questions[2]
    cells = panels.question_cells(regenerating, T0, 0.75, label_width=20)
    assert [c.plain for c in cells] == ["Explain the differe…", "regenerating", "1", "0.612", "09:26:50"]
    assert cells[3].style == "red"
    unnamed = panels.question_cells(snap.questions[5], T0, 0.75)
    assert unnamed[0].plain == "q-0006"


def test_journey_timeline_shows_waits_errors_delays_and_scores():
    text = render_text(panels.journey(recorded_journey(), 0.75, 100), 100)
    lines = text.splitlines()
    assert lines[0].startswith("How does photosynthesis")
    assert "━" in lines[1]  # the journey to scale
    retry = next(line for line in lines if "retrying-overload" in line)
    assert "overload 503" in retry and "delay 2.0s" in retry and "1.2s" in retry
    assert "score 0.612 ≤ 0.75" in text
    assert "score 0.884 > 0.75" in text
    assert lines[-1].startswith("now: validated · 8 hops in 6.4s")


def test_journey_without_hops_says_so():
    from qactl.dashboard.model import Journey

    assert "no hops recorded" in render_text(panels.journey(Journey("q-x", ()), 0.75))
