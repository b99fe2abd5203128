"""Questions files for `qactl traffic`, and the run summary's percentiles."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from qactl.errors import ConfigError
from qactl.traffic.questions import TrafficQuestion, digest, knowledge_base_questions, load_questions, tagged, take
from qactl.traffic.runner import RunResult, Sample
from qactl.traffic.stats import percentile, summarize


def test_text_lines_skip_blanks_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("# questions\nWhat is Kafka?\n\n  What is Flink?  \n")
    assert load_questions(path) == [TrafficQuestion("What is Kafka?"), TrafficQuestion("What is Flink?")]


def test_json_yaml_and_json_lines_carry_references(tmp_path: Path) -> None:
    (tmp_path / "q.json").write_text('{"questions": ["A?", {"question": "B?", "reference_answer": "b"}]}')
    (tmp_path / "q.yaml").write_text("- question: A?\n  reference: a\n- B?\n")
    (tmp_path / "q.jsonl").write_text('{"question": "A?"}\n\n"B?"\n')
    assert load_questions(tmp_path / "q.json") == [TrafficQuestion("A?"), TrafficQuestion("B?", "b")]
    assert load_questions(tmp_path / "q.yaml") == [TrafficQuestion("A?", "a"), TrafficQuestion("B?")]
    assert load_questions(tmp_path / "q.jsonl") == [TrafficQuestion("A?"), TrafficQuestion("B?")]


def test_the_knowledge_base_file_itself_is_a_questions_file() -> None:
    from services.common.knowledge_base import DEFAULT_PATH

    assert load_questions(DEFAULT_PATH) == knowledge_base_questions()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.json", "[1, 2]", "expected a question"),
        ("q.json", "{", "not valid JSON"),
        ("q.yaml", "a: [", "not valid YAML"),
        ("q.yaml", "{other: 1}", "expected a list"),
        ("q.txt", "# only a comment\n", "has no questions"),
        ("q.json", '[{"question": ""}]', "empty or missing question"),
    ],
)
def test_bad_questions_files_are_refused(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_questions(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_questions(tmp_path / "none.txt")


def test_count_cycles_and_tags_make_questions_unique() -> None:
    base = [TrafficQuestion("A?"), TrafficQuestion("B?")]
    assert [q.question for q in take(base, 5)] == ["A?", "B?", "A?", "B?", "A?"]
    assert take(base, None) == base
    assert [q.question for q in tagged(take(base, 3), "t1")] == ["A? (t1-1)", "B? (t1-2)", "A? (t1-3)"]
    assert digest(base) == digest(list(base)) != digest(base[::-1])


def test_percentiles_interpolate_like_percentile_cont() -> None:
    assert percentile([], 0.5) is None
    assert percentile([100.0, 300.0], 0.5) == 200.0
    assert percentile([100.0, 300.0], 0.95) == pytest.approx(290.0)
    assert percentile([5.0], 0.99) == 5.0


def test_summary_of_a_run() -> None:
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    samples = [
        Sample(1, "a", t, "validated", perceived_ms=4.0, real_ms=900.0),
        Sample(2, "b", t, "low_quality", perceived_ms=6.0, real_ms=1100.0),
        Sample(3, "c", t, "validated", perceived_ms=2.0, real_ms=2.0, from_store=True),
        Sample(4, "d", t, "timeout", perceived_ms=5.0),
        Sample(5, "e", t, "rejected", perceived_ms=1.0),
    ]
    summary = summarize(RunResult("async", samples, t, wall_seconds=3.0))
    assert (summary.samples, summary.succeeded, summary.from_store) == (5, 3, 1)
    assert summary.success_percent == 60.0
    assert summary.perceived_ms["p50"] == 4.0
    assert summary.real_ms["p50"] == 900.0
    assert summary.throughput_per_s == 1.0  # 3 questions reached an answer in 3 s
    assert summary.outcomes == {"validated": 2, "low_quality": 1, "timeout": 1, "rejected": 1}
