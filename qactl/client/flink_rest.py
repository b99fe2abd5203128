"""Flink's REST API: cluster overview, task managers, jobs, job details, checkpoints, cancel, stop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from qactl.client.http import shared_client

ACTIVE_STATES = frozenset({"INITIALIZING", "CREATED", "RUNNING", "RESTARTING", "RECONCILING", "FAILING", "CANCELLING"})


@dataclass(frozen=True)
class Overview:
    taskmanagers: int
    slots_total: int
    slots_available: int
    jobs_running: int
    jobs_finished: int
    jobs_cancelled: int
    jobs_failed: int
    flink_version: str


@dataclass(frozen=True)
class TaskManager:
    id: str
    slots_total: int
    slots_free: int
    data_port: int


@dataclass(frozen=True)
class JobSummary:
    jid: str
    name: str
    state: str
    start_time: int  # epoch ms
    duration_ms: int
    tasks: dict[str, int] = field(default_factory=dict)  # task count by state

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def all_tasks_running(self) -> bool:
        """A RUNNING job may still be deploying its tasks; this says they all process records."""
        total = self.tasks.get("total", 0)
        return total > 0 and self.tasks.get("running", 0) == total


class FlinkRest:
    """``client``: an HTTP client of the caller's own (the dashboard keeps one for its life);
    by default the process's shared one."""

    def __init__(self, base_url: str, timeout: float = 5.0, client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._client = client

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        client = self._client or shared_client()
        response = client.request(method, f"{self.base_url}{path}", timeout=self.timeout, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def overview(self) -> Overview:
        raw = self._request("GET", "/overview")
        return Overview(
            taskmanagers=raw["taskmanagers"],
            slots_total=raw["slots-total"],
            slots_available=raw["slots-available"],
            jobs_running=raw["jobs-running"],
            jobs_finished=raw["jobs-finished"],
            jobs_cancelled=raw["jobs-cancelled"],
            jobs_failed=raw["jobs-failed"],
            flink_version=raw.get("flink-version", ""),
        )

    def taskmanagers(self) -> list[TaskManager]:
        raw = self._request("GET", "/taskmanagers")
        return [
            TaskManager(tm["id"], tm["slotsNumber"], tm["freeSlots"], tm.get("dataPort", 0))
            for tm in raw.get("taskmanagers", [])
        ]

    def jobs(self) -> list[JobSummary]:
        raw = self._request("GET", "/jobs/overview")
        return [
            JobSummary(
                j["jid"], j["name"], j["state"], j.get("start-time", 0), j.get("duration", 0), j.get("tasks", {})
            )
            for j in raw.get("jobs", [])
        ]

    def running_jobs(self, name: str | None = None) -> list[JobSummary]:
        return [j for j in self.jobs() if j.active and (name is None or j.name == name)]

    def job(self, jid: str) -> dict[str, Any]:
        """The full job detail (vertices with their status and metrics) as Flink returns it."""
        return self._request("GET", f"/jobs/{jid}")

    def checkpoints(self, jid: str) -> dict[str, Any]:
        """Checkpoint counts and the latest checkpoints of a job, as Flink returns them."""
        return self._request("GET", f"/jobs/{jid}/checkpoints")

    def cancel(self, jid: str) -> None:
        self._request("PATCH", f"/jobs/{jid}", params={"mode": "cancel"})

    def stop_with_savepoint(self, jid: str, target_directory: str) -> str:
        """Ask Flink to take a savepoint into ``target_directory`` and then stop the job; a trigger id.

        Not drained: the job's timers and buffered state go into the savepoint as they are.
        """
        raw = self._request("POST", f"/jobs/{jid}/stop", json={"targetDirectory": target_directory, "drain": False})
        return raw["request-id"]

    def savepoint_status(self, jid: str, trigger_id: str) -> SavepointStatus:
        """Where a savepoint triggered by ``stop_with_savepoint`` is: in progress, done (location) or failed."""
        raw = self._request("GET", f"/jobs/{jid}/savepoints/{trigger_id}")
        operation = raw.get("operation") or {}
        cause = operation.get("failure-cause") or {}
        return SavepointStatus(
            done=raw.get("status", {}).get("id") == "COMPLETED",
            location=operation.get("location"),
            failure=(cause.get("stack-trace") or cause.get("class") or "").strip().splitlines()[0] if cause else None,
        )

    def root_exception(self, jid: str) -> str:
        """The first line of the job's root exception, or ''."""
        raw = self._request("GET", f"/jobs/{jid}/exceptions") or {}
        history = (raw.get("exceptionHistory") or {}).get("entries") or []
        text = raw.get("root-exception") or (history[0].get("stacktrace") if history else "") or ""
        return text.strip().splitlines()[0] if text.strip() else ""


@dataclass(frozen=True)
class SavepointStatus:
    done: bool  # the operation finished: ``location`` is set on success, ``failure`` otherwise
    location: str | None = None
    failure: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.done and self.location is not None and self.failure is None
