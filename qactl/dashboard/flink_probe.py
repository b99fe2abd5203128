"""Flink REST for the dashboard: job state, checkpoints, records in and out."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import httpx

from qactl.client.flink_rest import FlinkRest
from qactl.dashboard.model import FlinkJobRow
from services.common.settings import QactlSettings

log = logging.getLogger(__name__)


class FlinkRestProbe:
    """Active jobs (or, when none is, the most recent ones, so a failed job stays visible)."""

    def __init__(self, settings: QactlSettings, timeout: float = 2.0) -> None:
        # One HTTP client for the dashboard's life: a new one per request (and its TLS context)
        # costs tens of milliseconds of CPU, every second.
        self._client = httpx.Client(timeout=timeout)
        self._rest = FlinkRest(settings.flink.rest, timeout, client=self._client)

    def jobs(self) -> Sequence[FlinkJobRow]:
        summaries = self._rest.jobs()
        active = [j for j in summaries if j.active]
        shown = active or sorted(summaries, key=lambda j: j.start_time, reverse=True)[:2]
        return [self._row(job) for job in shown]

    def _row(self, job) -> FlinkJobRow:  # type: ignore[no-untyped-def]
        records_in = records_out = None
        try:
            records_in, records_out = records_through(self._rest.job(job.jid))
        except Exception:
            log.debug("no vertex metrics for %s", job.jid, exc_info=True)
        completed = failed = None
        ago = duration = None
        try:
            checkpoints = self._rest.checkpoints(job.jid)
            counts = checkpoints.get("counts", {})
            completed, failed = counts.get("completed"), counts.get("failed")
            latest = (checkpoints.get("latest") or {}).get("completed") or {}
            if latest.get("latest_ack_timestamp"):
                ago = max(0.0, time.time() - latest["latest_ack_timestamp"] / 1000)
            duration = latest.get("end_to_end_duration")
        except Exception:  # checkpointing off or the job just started
            log.debug("no checkpoint stats for %s", job.jid, exc_info=True)
        return FlinkJobRow(
            job_id=job.jid,
            name=job.name,
            state=job.state,
            duration_seconds=job.duration_ms / 1000 if job.duration_ms else None,
            checkpoints_completed=completed,
            checkpoints_failed=failed,
            last_checkpoint_seconds_ago=ago,
            last_checkpoint_duration_ms=duration,
            records_in=records_in,
            records_out=records_out,
        )

    def close(self) -> None:
        self._client.close()


def records_through(job_detail: Mapping[str, object]) -> tuple[int | None, int | None]:
    """Records a job took in (sent on by its source vertices) and let out (received by its last
    vertices, where the sinks run), from Flink's job detail with its plan."""
    vertices = {v["id"]: v for v in job_detail.get("vertices", [])}  # type: ignore[union-attr]
    nodes = (job_detail.get("plan") or {}).get("nodes", [])  # type: ignore[union-attr]
    if not vertices or not nodes:
        return None, None
    fed = {edge["id"] for node in nodes for edge in node.get("inputs", [])}
    sources = [n["id"] for n in nodes if not n.get("inputs")]
    sinks = [n["id"] for n in nodes if n["id"] not in fed]

    def metric(vid: str, name: str) -> int:
        return int((vertices.get(vid, {}).get("metrics") or {}).get(name, 0))

    records_in = sum(metric(v, "write-records") for v in sources)
    # A job of one chained vertex is both: what it read from Kafka never crosses the network.
    records_out = sum(metric(v, "read-records") for v in sinks if v not in sources)
    return records_in, records_out if any(v not in sources for v in sinks) else None
