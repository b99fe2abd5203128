"""The exactly-once-terminal check on crafted rows in the real PostgreSQL (a scratch database):
each way a question can break the promise must be caught, and a clean one must pass."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qactl.chaos import invariant, store
from qactl.client import pg
from qactl.dashboard.postgres_probe import PostgresQualityProbe
from qactl.reports.sections import collect
from services.common.settings import QactlSettings
from tests.qactl.scratch_db import execute, scratch_database

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def crafted(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    with scratch_database(infra_stack, "chaos") as settings:
        ledger = (
            ("once-ok", "validated", True),  # one response
            ("once-failed", "failed", True),  # one failure row
            ("dup", "validated", True),  # a response and a failure: two terminal records
            ("dup-failed", "failed", True),  # failed twice
            ("stuck", "generating", False),  # open, no record
            ("lost-answer", "validated", True),  # terminal in the ledger, no record
            ("disagree", "scoring", False),  # a record while the ledger says open
        )
        for qid, state, terminal in ledger:
            execute(
                settings,
                "INSERT INTO questions (question_id, question, state, terminal_at) VALUES (%s, %s, %s, CASE WHEN %s THEN now() END)",
                qid, f"question {qid} (chaos-t1-1)", state, terminal,
            )  # fmt: skip
        for qid in ("once-ok", "dup", "disagree"):
            execute(settings, "INSERT INTO responses (question_id, question, answer, status) VALUES (%s, %s, 'a', 'validated')", qid, qid)
        for qid in ("once-failed", "dup", "dup-failed", "dup-failed"):
            execute(settings, "INSERT INTO failed_questions (question_id, reason, error_kind) VALUES (%s, 'r', 'exhausted')", qid)
        yield settings


def verdict(settings: QactlSettings, ids: list[str]) -> invariant.Verdict:
    conn = pg.connect(settings.postgres.url)
    try:
        return invariant.check(conn, ids)
    finally:
        conn.close()


def test_each_violation_is_caught_and_named(crafted: QactlSettings) -> None:
    ids = ["once-ok", "once-failed", "dup", "dup-failed", "stuck", "lost-answer", "disagree", "never-claimed"]
    found = verdict(crafted, ids)
    assert {o: sorted(q) for o, q in found.by_outcome.items()} == {
        "terminal_once": ["once-failed", "once-ok"],
        "stuck": ["stuck"],
        "duplicated": ["dup", "dup-failed"],
        "missing": ["lost-answer", "never-claimed"],
        "inconsistent": ["disagree"],
    }
    assert found.accepted == len(ids)
    assert found.open == 2  # stuck and disagree: what a run waits for before it judges
    assert [v.split(":")[0] for v in found.violations] == ["1 stuck", "2 duplicated", "2 missing", "1 inconsistent"]


@pytest.mark.parametrize(("qid", "outcome"), [("stuck", "stuck"), ("dup", "duplicated"), ("never-claimed", "missing")])
def test_one_bad_question_among_good_ones_fails_the_check(crafted: QactlSettings, qid: str, outcome: str) -> None:
    found = verdict(crafted, ["once-ok", "once-failed", qid])
    assert found.by_outcome[outcome] == [qid]
    assert found.count("terminal_once") == 2
    assert len(found.violations) == 1


def test_clean_questions_pass(crafted: QactlSettings) -> None:
    found = verdict(crafted, ["once-ok", "once-failed", "once-ok"])  # an id accepted twice counts once
    assert found.violations == [] and found.count("terminal_once") == 2


def test_open_questions_of_a_run_are_found_by_its_tag(crafted: QactlSettings) -> None:
    conn = pg.connect(crafted.postgres.url)
    try:
        assert invariant.open_questions(conn, "chaos-t1") == 2  # stuck and disagree
        assert invariant.open_questions(conn, "chaos-other") == 0
    finally:
        conn.close()


def test_a_stored_run_is_shown_by_metrics_and_running_rows_are_closed(crafted: QactlSettings) -> None:
    dsn = crafted.postgres.url
    interrupted = store.start(dsn, "kill-kafka", "kill -9 the broker", 10, 2.0)
    run = store.start(dsn, "kill-persister", "kill -9 the persister", 30, 3.0)
    assert store.update(dsn, run, phase="fault", in_flight_at_fault=7)
    probe = PostgresQualityProbe(crafted)  # the dashboard's: shows the experiment under way
    try:
        shown = probe.running_chaos()
        assert shown is not None and (shown.run_id, shown.experiment, shown.phase, shown.in_flight_at_fault) == (
            run, "kill-persister", "fault", 7,
        )
        store.finish(
            dsn, run, state="violated", accepted=30, terminal_once=29, stuck=1, duplicated=0, lost=0,
            recover_seconds=12.5, recovered_by="qactl up", violations=["1 stuck: q1"], detail={"tag": "x"},
        )  # fmt: skip
        assert probe.running_chaos() is None
    finally:
        probe.close()
    section = collect(dsn, 0.6, ("chaos",))[0]
    rows = [dict(zip(section.columns, row)) for row in section.rows]
    assert [(r["run"], r["experiment"], r["result"]) for r in rows] == [
        (run, "kill-persister", "violated"),
        (interrupted, "kill-kafka", "error"),  # left running by an earlier run: not running any more
    ]
    assert rows[0]["in_flight_at_fault"] == 7 and rows[0]["stuck"] == 1 and rows[0]["recovered_by"] == "qactl up"
    assert rows[0]["violations"] == "1 stuck: q1"
