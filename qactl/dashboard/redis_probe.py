"""Redis for the dashboard: the live stage of recent questions, followed by status events."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence

import redis
from pydantic import ValidationError

from qactl.dashboard.model import QuestionRow
from services.common.schemas import ErrorInfo, Hop
from services.common.settings import QactlSettings
from services.common.status import EVENTS_CHANNEL, StatusTracker, hops_key, status_key

log = logging.getLogger(__name__)


def describe_error(error: ErrorInfo | None) -> str | None:
    if error is None:
        return None
    return f"{error.kind.value} {error.status_code}" if error.status_code else error.kind.value


class RedisLiveProbe:
    """Recent questions from the status tracker: seeded once by a scan, then followed by events.

    The status hashes and hop lists that every stage writes are the truth; the pub/sub channel
    only says what changed, so a poll costs one non-blocking read of the channel instead of a
    scan of every question. After a lost connection the probe seeds itself again.
    """

    def __init__(self, settings: QactlSettings, client: redis.Redis | None = None, scan_limit: int = 5000) -> None:
        self._redis = client or redis.Redis.from_url(
            settings.redis.connection_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self._tracker = StatusTracker(settings, self._redis)
        self._pubsub: redis.client.PubSub | None = None
        self._rows: OrderedDict[str, QuestionRow] = OrderedDict()  # least recently changed first
        self._scan_limit = scan_limit

    def recent_questions(self, limit: int) -> Sequence[QuestionRow]:
        try:
            if self._pubsub is None:
                self._follow(limit)
            self._drain()
        except redis.RedisError:
            self._drop_pubsub()
            raise
        keep = max(limit, 1) * 10
        while len(self._rows) > keep:
            self._rows.popitem(last=False)
        newest = sorted(self._rows.values(), key=lambda r: r.updated_at, reverse=True)
        return newest[:limit]

    def hops(self, question_id: str) -> Sequence[Hop]:
        return self._tracker.hops(question_id)

    def _follow(self, limit: int) -> None:
        # Subscribe before the scan: an event in between is then seen twice, never missed.
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(EVENTS_CHANNEL)
        self._pubsub = pubsub
        self._rows.clear()
        ids = []
        prefix = status_key("")
        for key in self._redis.scan_iter(match=f"{prefix}*", count=1000):
            ids.append((key.decode() if isinstance(key, bytes) else key)[len(prefix):])
            if len(ids) >= self._scan_limit:
                break
        pipe = self._redis.pipeline(transaction=False)
        for qid in ids:
            pipe.hget(status_key(qid), "updated_at")
        stamps = pipe.execute()
        dated = sorted(
            ((s.decode() if isinstance(s, bytes) else s, qid) for s, qid in zip(stamps, ids) if s),
            reverse=True,
        )[:limit]
        pipe = self._redis.pipeline(transaction=False)
        for _, qid in dated:
            pipe.lindex(hops_key(qid), -1)
        for (_, qid), raw in reversed(list(zip(dated, pipe.execute()))):
            if raw:
                self._apply(qid, raw)

    def _drain(self, most: int = 20_000) -> None:
        assert self._pubsub is not None
        for _ in range(most):
            message = self._pubsub.get_message(timeout=0)
            if message is None:
                return
            if message.get("type") != "message":
                continue
            try:
                event = json.loads(message["data"])
                self._apply(event["question_id"], event["hop"])
            except (ValueError, KeyError, TypeError, ValidationError):
                log.debug("unreadable status event %r", message.get("data"))

    def _apply(self, question_id: str, raw_hop: object) -> None:
        if isinstance(raw_hop, (bytes, str)):
            hop = Hop.model_validate_json(raw_hop)
        else:
            hop = Hop.model_validate(raw_hop)
        previous = self._rows.pop(question_id, None)
        if previous is not None and previous.updated_at > hop.at:
            self._rows[question_id] = previous  # a late duplicate of an older hop changes nothing
            return
        self._rows[question_id] = QuestionRow(
            question_id=question_id,
            stage=hop.stage,
            updated_at=hop.at,
            attempt=hop.attempt,
            score=hop.score if hop.score is not None else (previous.score if previous else None),
            question=previous.question if previous else None,
            error=describe_error(hop.error),
        )

    def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except redis.RedisError:
                pass
        self._pubsub = None

    def close(self) -> None:
        self._drop_pubsub()
        self._redis.close()
