"""The promise `qactl chaos` checks: every question the API accepted (202) ends in exactly one
terminal state in PostgreSQL, with exactly one terminal record.

For each accepted question id, from ``questions`` (the ledger) and the terminal records
(``responses`` + ``failed_questions``):

- terminal once: the ledger's state is terminal with its ``terminal_at``, and one record;
- stuck: the ledger's state is still open and there is no record (yet: the caller waits first);
- duplicated: more than one terminal record;
- missing: accepted, yet not in the ledger at all, or terminal in the ledger without a record
  (the answer was lost on the way);
- inconsistent: one record while the ledger still says open (the two disagree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg2.extensions

from services.common.schemas import Stage

TERMINAL_STATES = (Stage.validated.value, Stage.low_quality.value, Stage.failed.value)

LEDGER = """
SELECT a.question_id,
       q.question_id IS NOT NULL                                                        AS in_ledger,
       q.state,
       q.terminal_at IS NOT NULL                                                        AS has_terminal_at,
       (SELECT count(*) FROM responses r WHERE r.question_id = a.question_id)
     + (SELECT count(*) FROM failed_questions f WHERE f.question_id = a.question_id)    AS records
  FROM unnest(%s::text[]) AS a(question_id)
  LEFT JOIN questions q ON q.question_id = a.question_id
"""

OUTCOMES = ("terminal_once", "stuck", "duplicated", "missing", "inconsistent")


@dataclass
class Verdict:
    """Question ids per outcome, for the accepted ids that were checked."""

    by_outcome: dict[str, list[str]] = field(default_factory=lambda: {o: [] for o in OUTCOMES})

    def count(self, outcome: str) -> int:
        return len(self.by_outcome[outcome])

    @property
    def accepted(self) -> int:
        return sum(len(ids) for ids in self.by_outcome.values())

    @property
    def open(self) -> int:
        """Not settled yet: worth waiting for (stuck, or recorded while the ledger lags)."""
        return self.count("stuck") + self.count("inconsistent")

    @property
    def violations(self) -> list[str]:
        return [
            f"{self.count(o)} {o.replace('_', ' ')}: {', '.join(self.by_outcome[o][:3])}{' ...' if self.count(o) > 3 else ''}"
            for o in OUTCOMES[1:]
            if self.by_outcome[o]
        ]


def classify(in_ledger: bool, state: str | None, has_terminal_at: bool, records: int) -> str:
    terminal = state in TERMINAL_STATES and has_terminal_at
    if records > 1:
        return "duplicated"
    if not in_ledger:
        return "inconsistent" if records else "missing"
    if terminal:
        return "terminal_once" if records == 1 else "missing"
    return "inconsistent" if records else "stuck"


def check(conn: psycopg2.extensions.connection, accepted_ids: Sequence[str]) -> Verdict:
    """Classify every accepted question id (each id once)."""
    verdict = Verdict()
    ids = sorted(set(accepted_ids))
    if not ids:
        return verdict
    with conn.cursor() as cur:
        cur.execute(LEDGER, (ids,))
        for question_id, in_ledger, state, has_terminal_at, records in cur.fetchall():
            verdict.by_outcome[classify(in_ledger, state, has_terminal_at, int(records))].append(question_id)
    return verdict


OPEN_WITH_TAG = """
SELECT count(*) FROM questions WHERE terminal_at IS NULL AND position(%s IN question) > 0
"""


def open_questions(conn: psycopg2.extensions.connection, tag: str) -> int:
    """Questions of this run (their text carries ``tag``) accepted and not terminal now."""
    with conn.cursor() as cur:
        cur.execute(OPEN_WITH_TAG, (tag,))
        return int(cur.fetchone()[0])
