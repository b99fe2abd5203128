"""The docs stay true: their links resolve inside the repository, and the architecture page
names every topic with its partition count and every table and view of the migrations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.common.settings import Policies
from services.common.topics import all_topics

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MIGRATIONS = sorted((ROOT / "services" / "common" / "migrations").glob("*.sql"))

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CREATED = re.compile(r"^CREATE (TABLE|VIEW) (\w+)", re.MULTILINE | re.IGNORECASE)


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every Markdown table row, backticks stripped."""
    return [
        [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.lstrip().startswith("|")
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_stays_in_the_repository_and_resolves(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        assert "://" not in target and not target.startswith("mailto:"), f"{doc.name} links outside: {target}"
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


def test_the_architecture_names_every_topic_with_its_partitions() -> None:
    rows = table_rows(ARCHITECTURE.read_text())
    for topic in all_topics(Policies()):
        assert any(topic.name in row and str(topic.partitions) in row for row in rows), (
            f"docs/architecture.md has no table row for {topic.name} with {topic.partitions} partition(s)"
        )


def test_the_architecture_names_every_table_and_view() -> None:
    rows = table_rows(ARCHITECTURE.read_text())
    created = [name for sql in MIGRATIONS for _, name in CREATED.findall(sql.read_text())]
    assert created, "no CREATE TABLE found in the migrations"
    for name in created:
        assert any(row[0] == name for row in rows), f"docs/architecture.md has no table row for {name}"
