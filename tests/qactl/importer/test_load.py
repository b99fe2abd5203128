"""`qactl migrate`'s import against the real PostgreSQL: one transaction, idempotent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qactl.errors import QactlError
from qactl.importer.load import ImportAborted, import_file
from services.common.schemas import question_id_for
from services.common.settings import QactlSettings
from tests.qactl.importer.test_records import write_json
from tests.qactl.scratch_db import execute, scratch_database


@pytest.fixture(scope="module")
def database(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    with scratch_database(infra_stack, "import") as settings:
        yield settings


def imported(settings: QactlSettings) -> list[tuple[object, ...]]:
    return execute(settings, "SELECT question, answer, score, status, source FROM responses WHERE source = 'import' ORDER BY question")


def test_valid_records_are_imported_and_rejected_ones_reported(database: QactlSettings, tmp_path: Path) -> None:
    execute(database, "DELETE FROM responses")
    path = write_json(
        tmp_path / "response.json",
        [
            {"question": "Alpha?", "answer": "a", "score": 0.9},
            {"question": "Beta?", "answer": "b", "status": "low-quality"},
            {"question": "Gamma?"},  # partial: no answer
            {"question": "alpha?", "answer": "dup"},  # duplicate of record 1
            {"question": "Delta?", "answer": "d"},  # partial but valid: unscored
        ],
    )
    report = import_file(database.postgres.url, path, 0.75)
    assert (report.records, report.inserted, report.already_present, report.rejected) == (5, 3, 0, 2)
    assert imported(database) == [
        ("Alpha?", "a", 0.9, "validated", "import"),
        ("Beta?", "b", None, "low_quality", "import"),
        ("Delta?", "d", None, "validated", "import"),
    ]


def test_importing_twice_inserts_nothing_the_second_time(database: QactlSettings, tmp_path: Path) -> None:
    execute(database, "DELETE FROM responses")
    path = write_json(tmp_path / "response.json", [{"question": f"Q{i}?", "answer": "x"} for i in range(50)])
    first = import_file(database.postgres.url, path, 0.75)
    second = import_file(database.postgres.url, path, 0.75)
    assert (first.inserted, first.already_present) == (50, 0)
    assert (second.inserted, second.already_present) == (0, 50)
    assert len(imported(database)) == 50


def test_a_question_the_pipeline_answered_is_left_as_it_was(database: QactlSettings, tmp_path: Path) -> None:
    execute(database, "DELETE FROM responses")
    execute(
        database,
        "INSERT INTO responses (question_id, question, answer, score, status) VALUES (%s, %s, %s, %s, 'validated')",
        question_id_for("Kept?"), "Kept?", "pipeline answer", 0.88,
    )
    path = write_json(tmp_path / "response.json", [{"question": "kept?", "answer": "old answer", "score": 0.1}])
    report = import_file(database.postgres.url, path, 0.75)
    assert (report.inserted, report.already_present) == (0, 1)
    assert execute(database, "SELECT answer, source FROM responses") == [("pipeline answer", "pipeline")]


def test_strict_imports_nothing_when_a_record_is_rejected(database: QactlSettings, tmp_path: Path) -> None:
    execute(database, "DELETE FROM responses")
    path = write_json(tmp_path / "response.json", [{"question": "Fine?", "answer": "ok"}, {"question": "Broken?"}])
    with pytest.raises(ImportAborted, match="record 2"):
        import_file(database.postgres.url, path, 0.75, strict=True)
    assert imported(database) == []


def test_dry_run_writes_nothing(database: QactlSettings, tmp_path: Path) -> None:
    execute(database, "DELETE FROM responses")
    path = write_json(tmp_path / "response.json", [{"question": "Dry?", "answer": "ok"}])
    report = import_file(database.postgres.url, path, 0.75, dry_run=True)
    assert report.valid == 1 and report.inserted == 0 and imported(database) == []


def test_a_database_error_midway_leaves_nothing_half_imported(database: QactlSettings, tmp_path: Path) -> None:
    """PostgreSQL refuses one row in the middle (a trigger, as a constraint added later would): no row stays."""
    execute(database, "DELETE FROM responses")
    execute(
        database,
        """CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN IF NEW.question = 'Poison 700?' THEN RAISE EXCEPTION 'refused by a trigger'; END IF; RETURN NEW; END $$;
           CREATE TRIGGER refuse_poison BEFORE INSERT ON responses FOR EACH ROW EXECUTE FUNCTION refuse_poison();""",
    )
    try:
        path = write_json(tmp_path / "response.json", [{"question": f"Poison {i}?", "answer": "x"} for i in range(1500)])
        with pytest.raises(QactlError, match="nothing imported.*refused by a trigger"):
            import_file(database.postgres.url, path, 0.75)
        assert execute(database, "SELECT count(*) FROM responses") == [(0,)]
    finally:
        execute(database, "DROP TRIGGER refuse_poison ON responses; DROP FUNCTION refuse_poison();")


def test_text_with_tabs_newlines_and_backslashes_survives_copy(database: QactlSettings, tmp_path: Path) -> None:
    execute(database, "DELETE FROM responses")
    awkward = "line one\nline\ttwo \\ back\\nslash\r end \u00e9\u4e2d"
    path = write_json(tmp_path / "response.json", [{"question": "Awkward?", "answer": awkward, "reference": awkward}])
    import_file(database.postgres.url, path, 0.75)
    assert execute(database, "SELECT answer, reference_answer FROM responses") == [(awkward, awkward)]


def test_the_generated_benchmark_file_imports_whole(database: QactlSettings, tmp_path: Path) -> None:
    """bench/make_response_json.py writes a file that imports without a rejection (1,000 records here)."""
    import subprocess
    import sys

    execute(database, "DELETE FROM responses")
    out = tmp_path / "response.json"
    script = Path(__file__).resolve().parents[3] / "bench" / "make_response_json.py"
    subprocess.run([sys.executable, str(script), str(out), "--count", "1000"], check=True, capture_output=True)
    report = import_file(database.postgres.url, out, 0.75)
    assert (report.rejected, report.inserted) == (0, 1000)
