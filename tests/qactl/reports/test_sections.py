"""`qactl metrics` queries on rows inserted into the real PostgreSQL (a scratch database)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from qactl.reports.sections import NOT_MEASURED, collect
from qactl.traffic.runner import RunResult, Sample
from qactl.traffic.store import record_run
from services.common.settings import QactlSettings
from tests.qactl.scratch_db import execute, scratch_database

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def empty(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    with scratch_database(infra_stack, "metrics_empty") as settings:
        yield settings


@pytest.fixture(scope="module")
def filled(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    with scratch_database(infra_stack, "metrics") as settings:
        insert_pipeline_rows(settings)
        yield settings


def insert_pipeline_rows(settings: QactlSettings) -> None:
    # Three questions: q1 validated at once, q2 validated after one regeneration with a 503
    # recovered on the way, q3 failed (overload retries exhausted).
    overload_hop = {"stage": "retrying-overload", "error": {"kind": "overload", "status_code": 503, "message": "busy"}}
    for qid, state, submitted, done in (
        ("q1", "validated", T0, T0 + timedelta(seconds=2)),
        ("q2", "validated", T0, T0 + timedelta(seconds=6)),
        ("q3", "failed", T0 + timedelta(seconds=1), T0 + timedelta(seconds=10)),
    ):
        execute(
            settings,
            "INSERT INTO questions (question_id, question, state, submitted_at, updated_at, terminal_at) VALUES (%s, %s, %s, %s, %s, %s)",
            qid, f"question {qid}", state, submitted, done, done,
        )
    execute(
        settings,
        """INSERT INTO responses (question_id, question, answer, score, status, attempt, llm_latency_ms, completed_at, hops)
           VALUES ('q1', 'question q1', 'a1', 0.90, 'validated', 0, 1000, %s, '[]'),
                  ('q2', 'question q2', 'a2', 0.80, 'validated', 1, 3000, %s, %s)""",
        T0 + timedelta(seconds=2), T0 + timedelta(seconds=6), json.dumps([overload_hop]),
    )
    execute(
        settings,
        "INSERT INTO failed_questions (question_id, question, reason, error_kind, status_code) VALUES ('q3', 'question q3', 'overload retries exhausted (3)', 'exhausted', 503)",
    )
    execute(
        settings,
        "INSERT INTO score_history (question_id, attempt, score) VALUES ('q1', 0, 0.90), ('q2', 0, 0.60), ('q2', 1, 0.80)",
    )
    for qid, stage, ms in (("q1", "generating", 100), ("q2", "generating", 300), ("q1", "total", 2000), ("q2", "total", 6000)):
        execute(
            settings,
            "INSERT INTO processing_metrics (question_id, stage, started_at, ended_at, duration_ms) VALUES (%s, %s, %s, %s, %s)",
            qid, stage, T0, T0 + timedelta(milliseconds=ms), ms,
        )
    # An imported baseline answer.
    execute(
        settings,
        "INSERT INTO responses (question_id, question, answer, score, status, llm_latency_ms, source) VALUES ('old', 'old?', 'x', 0.7, 'low_quality', 2500, 'import')",
    )


def by_name(settings: QactlSettings, *names: str) -> dict[str, object]:
    return {s.name: s for s in collect(settings.postgres.url, 0.75, names)}


def test_every_section_says_not_measured_on_an_empty_database(empty: QactlSettings) -> None:
    sections = collect(empty.postgres.url, 0.75)
    assert [s.name for s in sections] == [
        "latency", "errors", "regeneration", "regeneration_outcomes", "by_model", "throughput", "baseline",
        "comparison", "chaos",
    ]
    for section in sections:
        assert section.rows == [], section.name
        assert section.note and NOT_MEASURED in section.note, section.name


def test_latency_by_stage_percentiles(filled: QactlSettings) -> None:
    latency = by_name(filled, "latency")["latency"]
    rows = {r[0]: r for r in latency.rows}
    # percentile_cont over {100, 300}: p50 200, p95 290, p99 298.
    assert rows["generating"][1:5] == [2, 200.0, 290.0, 298.0]
    assert rows["total"][1:3] == [2, 4000.0]
    assert latency.rows[-1][0] == "total"  # the end-to-end line comes last


def test_error_distribution_separates_recovered_from_final(filled: QactlSettings) -> None:
    errors = by_name(filled, "errors")["errors"]
    found = {(r[0], r[1], r[2]): r[3] for r in errors.rows}
    assert found == {("recovered", "overload", 503): 1, ("failed", "exhausted", 503): 1}


def test_score_change_per_attempt(filled: QactlSettings) -> None:
    sections = by_name(filled, "regeneration")
    per_attempt = {r[0]: r for r in sections["regeneration"].rows}
    assert per_attempt[0][1:3] == [2, 0.75]  # mean of 0.90 and 0.60
    # attempt 1: q2 went 0.60 -> 0.80, improved, above the threshold.
    assert per_attempt[1][1:] == [1, 0.8, 0.2, 1, 1]
    outcomes = sections["regeneration_outcomes"]
    pipeline = [r for r in outcomes.rows if r[0] == "pipeline"]
    assert [r[1] for r in pipeline] == [0, 1]


def test_what_each_model_reached_counts_only_the_pipelines_answers(filled: QactlSettings) -> None:
    (row,) = by_name(filled, "regeneration")["by_model"].rows  # the imported answer is not counted
    # q1 validated at once (0.90), q2 validated after one regeneration (0.80); no model recorded.
    assert row == ["unknown", "", 2, 0.85, 1, 1, 0]


def test_throughput_and_success_rate_from_the_ledger(filled: QactlSettings) -> None:
    rows = dict(by_name(filled, "throughput")["throughput"].rows)
    assert rows["terminal states"] == 3 and rows["failed"] == 1
    assert rows["success rate (answered) %"] == 66.67
    # 3 terminal states between the first submission (T0) and the last one (T0 + 10 s).
    assert rows["throughput over that span (questions/s)"] == 0.3


def test_baseline_compares_imported_answers_with_the_pipeline(filled: QactlSettings) -> None:
    rows = {r[0]: r[1:] for r in by_name(filled, "baseline")["baseline"].rows}
    assert rows["answers"] == [1, 2]
    assert rows["validated %"] == [0.0, 100.0]
    assert rows["LLM latency p50 (ms)"] == [2500.0, 2000.0]


def sample(seq: int, outcome: str, perceived: float, real: float | None, from_store: bool = False) -> Sample:
    return Sample(
        seq=seq, question=f"q{seq}", sent_at=T0, outcome=outcome, http_status=202,
        perceived_ms=perceived, real_ms=real, from_store=from_store,
    )


def test_comparison_reads_only_recorded_traffic_runs(filled: QactlSettings) -> None:
    comparison = by_name(filled, "comparison")["comparison"]
    assert comparison.rows == [] and NOT_MEASURED in (comparison.note or "")

    pipeline = RunResult(
        "async",
        [sample(1, "validated", 5.0, 900.0), sample(2, "validated", 7.0, 1100.0), sample(3, "failed", 6.0, 2000.0)],
        T0, wall_seconds=2.0,
    )
    record_run(filled.postgres.url, pipeline, questions_source="test", questions_digest="d1", rate=5.0, poll_interval=0.5)
    half = {r[0]: r[1:] for r in by_name(filled, "comparison")["comparison"].rows}
    assert half["perceived latency p50 (ms)"] == [NOT_MEASURED, 6.0]
    note = by_name(filled, "comparison")["comparison"].note
    assert NOT_MEASURED in note and "--sync-baseline" in note

    sync = RunResult(
        "sync",
        [sample(1, "answered", 1000.0, 1000.0), sample(2, "error", 3000.0, 3000.0), sample(3, "answered", 2000.0, 2000.0)],
        T0, wall_seconds=6.0,
    )
    record_run(filled.postgres.url, sync, questions_source="test", questions_digest="d1", rate=None, poll_interval=None)
    comparison = by_name(filled, "comparison")["comparison"]
    rows = {r[0]: r[1:] for r in comparison.rows}
    assert rows["perceived latency p50 (ms)"] == [2000.0, 6.0]
    assert rows["real latency p50 (ms)"] == [2000.0, 1100.0]
    assert rows["throughput (answers/s)"] == [0.5, 1.5]
    assert rows["success rate %"] == [66.67, 66.67]
    assert comparison.note is None


def test_comparison_says_when_runs_were_on_different_questions(filled: QactlSettings) -> None:
    other = RunResult("sync", [sample(1, "answered", 10.0, 10.0)], T0 + timedelta(hours=1), wall_seconds=1.0)
    run_id = record_run(filled.postgres.url, other, questions_source="x", questions_digest="other", rate=None, poll_interval=None)
    # Default pairing still prefers the pair on the same questions...
    paired = by_name(filled, "comparison")["comparison"]
    assert paired.note is None
    # ...while an explicit choice of mismatched runs is flagged.
    (section,) = collect(filled.postgres.url, 0.75, ("comparison",), sync_run=run_id)
    assert "not on the same questions" in (section.note or "")
