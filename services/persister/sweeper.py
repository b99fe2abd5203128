"""The sweeper: no question stays open for ever, whatever held it up.

Every ``Policies.sweep_interval_seconds`` the persister asks PostgreSQL for questions that are
not terminal ``Policies.max_open_seconds`` after their submission, and sends each to
``questions-dead-letter`` as a ``stuck`` failure with the reason (how long, which stage it was
last seen in). The persister then writes that failure like any other dead letter: one writer of
terminal states, and the write is once, so an answer that arrives after the sweep is refused
(``conflict`` in the persister's log) and the question keeps its single terminal record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from confluent_kafka import Producer
from prometheus_client import Counter

from services.common import db, topics
from services.common.kafka import produce
from services.common.schemas import DeadLetter, ErrorInfo, ErrorKind, QuestionMessage
from services.common.settings import Policies

log = logging.getLogger(__name__)

SWEPT = Counter("qactl_persister_swept", "Questions failed by the sweeper as stuck")
BATCH = 500

OPEN_TOO_LONG = """
SELECT question_id, question, reference_answer, state, submitted_at, extract(epoch FROM now() - submitted_at)
FROM questions
WHERE terminal_at IS NULL AND submitted_at < now() - make_interval(secs => %s)
ORDER BY submitted_at
LIMIT %s
"""


class Sweeper:
    def __init__(self, dsn: str, policies: Policies, clock: Callable[[], float] = time.monotonic) -> None:
        self.dsn = dsn
        self.policies = policies
        self.clock = clock
        self.next_sweep = clock()
        # Sent but maybe not written yet: not sent again until a bound has passed once more.
        self.sent: dict[str, float] = {}

    def due(self) -> bool:
        return self.clock() >= self.next_sweep

    def sweep(self, producer: Producer) -> int:
        """Send every question open too long to the dead letter; how many were sent."""
        self.next_sweep = self.clock() + self.policies.sweep_interval_seconds
        bound = self.policies.max_open_seconds
        try:
            with db.connect(self.dsn, application_name="persister-sweeper") as conn, conn.cursor() as cur:
                cur.execute(OPEN_TOO_LONG, (bound, BATCH))
                rows = cur.fetchall()
            conn.close()
        except Exception as exc:  # noqa: BLE001 (PostgreSQL down: the next sweep tries again)
            log.warning("sweep skipped: %s", exc)
            return 0
        now = self.clock()
        self.sent = {qid: at for qid, at in self.sent.items() if now - at < bound}
        count = 0
        for question_id, question, reference, state, submitted_at, age in rows:
            if question_id in self.sent:
                continue
            letter = stuck_letter(question_id, question, reference, state, submitted_at, float(age), bound)
            produce(producer, topics.DEAD_LETTER.name, letter, on_delivery=self._delivered)
            self.sent[question_id] = now
            count += 1
        if count:
            producer.poll(0)
            SWEPT.inc(count)
            log.warning("sweeper: %d question(s) open longer than %gs sent to %s", count, bound, topics.DEAD_LETTER.name)
        return count

    def _delivered(self, err, msg) -> None:
        if err is not None:  # not written: the next sweep sends it again
            self.sent.pop((msg.key() or b"").decode(), None)
            log.warning("sweeper: a dead letter was not delivered: %s", err)


def stuck_letter(
    question_id: str, question: str, reference: str | None, state: str, submitted_at: datetime, age: float, bound: float
) -> DeadLetter:
    reason = f"not terminal {age:.0f} s after submission (bound {bound:g} s); last seen {state}"
    return DeadLetter(
        question_id=question_id,
        reason=reason,
        error=ErrorInfo(kind=ErrorKind.stuck, message=reason),
        source_topic="sweeper",
        message=QuestionMessage(
            question_id=question_id, question=question or "?", reference_answer=reference,
            submitted_at=submitted_at if submitted_at.tzinfo else submitted_at.replace(tzinfo=UTC),
        ),
    )
