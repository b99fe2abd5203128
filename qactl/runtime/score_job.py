"""The Flink scoring job as a component: submitted once by `qactl up`, stopped by `qactl down`.

`down` stops it with a savepoint; `up` resumes from the newest savepoint or retained checkpoint
(``qactl.runtime.snapshots``), so answers buffered in its state survive both.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
from confluent_kafka import KafkaException

from qactl.client import kafka_admin
from qactl.client.flink_rest import FlinkRest
from qactl.errors import ComponentFailed, QactlError
from qactl.runtime import flink, snapshots
from qactl.runtime.component import Component, Report
from qactl.runtime.supervisor import Health
from services.common import topics
from services.common.settings import QactlSettings, write_private_file
from services.common.waiting import poll_until

NAME = "score-job"
JOB_SCRIPT = Path(__file__).resolve().parents[2] / "flink" / "job.py"
# States in which a job counts as "the one instance": submitting again would make a second.
LIVE_STATES = {"CREATED", "INITIALIZING", "RUNNING", "RESTARTING", "RECONCILING"}
SUBMIT_TIMEOUT_SECONDS = 240
STOP_TIMEOUT_SECONDS = 180
# Kafka's record time and PostgreSQL's now() may differ by clock steps; replay a little earlier.
REPLAY_MARGIN_MS = 5000


def job_name() -> str:
    from flink.job import JOB_NAME  # noqa: PLC0415 (pyflink is heavy; import on use)

    return JOB_NAME


def live_jobs(rest: FlinkRest) -> list:
    return [j for j in rest.jobs() if j.name == job_name() and j.state in LIVE_STATES]


def health(settings: QactlSettings) -> Health:
    try:
        jobs = live_jobs(FlinkRest(settings.flink.rest))
    except (httpx.HTTPError, OSError) as exc:
        return Health(False, f"Flink REST unreachable: {exc}")
    if not jobs:
        return Health(False, f"{job_name()} is not running")
    job = jobs[0]
    origin = _origin(settings, job.jid)
    detail = f"{job.name} {job.state}{', ' + origin if origin else ''} (id {job.jid})"
    if len(jobs) > 1:
        return Health(False, f"{len(jobs)} instances of {job.name}: expected one", {"jobs": [j.jid for j in jobs]})
    if job.state == "RUNNING" and not job.all_tasks_running:
        running, total = job.tasks.get("running", 0), job.tasks.get("total", 0)
        return Health(False, f"{detail}, {running}/{total} tasks running", {"jid": job.jid, "state": job.state})
    return Health(job.state == "RUNNING", detail, {"jid": job.jid, "state": job.state})


class RestoreFailed(ComponentFailed):
    """The job could not start from a savepoint or checkpoint (wrong job, corrupt, missing files)."""


def submit(settings: QactlSettings, report: Report) -> bool:
    """Submit the job unless an instance is already live; wait until it runs. True if submitted.

    It resumes from the newest savepoint or retained checkpoint (``qactl.runtime.snapshots``).
    One that cannot be restored is reported in one line, marked, and the job starts without
    state, from the Kafka offsets rewound to the oldest open question (``replay_from``): what
    that state held is read again from Kafka, so nothing is lost that Kafka still holds.
    """
    rest = FlinkRest(settings.flink.rest)
    if live_jobs(rest):
        return False
    prepare_scorer_model(settings, report)
    snapshot = snapshots.newest(settings)
    if snapshot is None:
        report(f"starting {job_name()} without state: no savepoint or retained checkpoint "
               "(Kafka offsets: the group's committed ones, else the earliest)")
        _remember_origin(settings, _run(settings, report, None), "started without state (none saved)")
        return True
    report(f"resuming {job_name()} from {snapshot.describe()}")
    try:
        jid = _run(settings, report, snapshot)
    except RestoreFailed as exc:
        snapshots.mark_unrestorable(snapshot, str(exc))
        report(f"cannot resume from {snapshot.describe()}: {exc}")
        report(f"starting {job_name()} without state; {replay_from(settings, snapshot)}")
        jid = _run(settings, report, None)
        _remember_origin(settings, jid, f"started without state ({snapshot.short_name} unrestorable, Kafka replayed)")
        return True
    snapshots.prune_older_than(settings, snapshot)
    report(f"{job_name()} resumed from {snapshot.describe()}")
    _remember_origin(settings, jid, f"resumed from {snapshot.kind} {snapshot.short_name}")
    return True


def _origin_file(settings: QactlSettings) -> Path:
    return settings.run_dir / f"{NAME}.origin.json"


def _remember_origin(settings: QactlSettings, jid: str | None, origin: str) -> None:
    """What the running job started from, for its health line (`qactl up` and `qactl status`)."""
    if jid is not None:
        write_private_file(_origin_file(settings), json.dumps({"jid": jid, "origin": origin}))


def _origin(settings: QactlSettings, jid: str) -> str:
    try:
        saved = json.loads(_origin_file(settings).read_text())
    except (OSError, ValueError):
        return ""
    return saved.get("origin", "") if saved.get("jid") == jid else ""


def replay_from(settings: QactlSettings, lost: snapshots.Snapshot) -> str:
    """Rewind the job's consumer group so that Kafka replays what ``lost`` held; says how far.

    The state holds answers whose offsets the checkpoint committed; every one belongs to a
    question not yet terminal, and was written to Kafka after that question was submitted. So
    replaying from the oldest open question's submission replays them all (answers of questions
    already terminal are scored again: the persister writes a terminal state once). Never from
    further back than ``max_open_seconds`` before the snapshot (nor, without PostgreSQL, from
    anywhere else): a question open longer than that is the sweeper's.
    """
    from flink.job import CONSUMER_GROUP  # noqa: PLC0415

    since = _oldest_open_submission(settings)
    # A question open longer than the bound is the sweeper's to fail: replaying for it is useless.
    floor_ms = int((lost.written_at - settings.policies.max_open_seconds) * 1000)
    if since is None:
        since_ms, why = floor_ms, "PostgreSQL did not say which questions are open"
    elif since is False:
        return "no question is open, so its state held nothing to replay"
    elif int(since.timestamp() * 1000) - REPLAY_MARGIN_MS < floor_ms:
        since_ms, why = floor_ms, f"max_open_seconds before the {lost.kind}"
    else:
        since_ms = int(since.timestamp() * 1000) - REPLAY_MARGIN_MS
        why = "the oldest open question's submission"
    try:
        rewound = kafka_admin.rewind_group(settings.kafka.bootstrap, CONSUMER_GROUP, topics.LLM_SUCCESS.name, since_ms)
    except (KafkaException, QactlError) as exc:
        raise ComponentFailed(f"cannot rewind {CONSUMER_GROUP} to replay the lost state: {exc}") from exc
    at = datetime.fromtimestamp(since_ms / 1000, UTC).isoformat(timespec="seconds")
    return f"{topics.LLM_SUCCESS.name} replayed from {at} ({why}): offsets {rewound}"


def _oldest_open_submission(settings: QactlSettings):
    """The oldest open question's submission time; False if none is open; None if unknown."""
    from services.common import db  # noqa: PLC0415

    try:
        with db.connect(settings.postgres.url, application_name="qactl-up") as conn, conn.cursor() as cur:
            cur.execute("SELECT min(submitted_at), count(*) FROM questions WHERE terminal_at IS NULL")
            oldest, count = cur.fetchone()
    except Exception:  # noqa: BLE001 (no database: fall back to the time bound)
        return None
    return oldest if count else False


def _run(settings: QactlSettings, report: Report, snapshot: snapshots.Snapshot | None) -> str | None:
    """``flink run`` the job (from ``snapshot`` if given), wait until all its tasks run; its id."""
    from flink.gate import JobConfig

    rest = FlinkRest(settings.flink.rest)
    before = {j.jid for j in rest.jobs()}
    report(f"submitting {job_name()} (flink run)")
    # A file, not an argument: the configuration may hold secrets (the Redis URL), and every
    # user sees a command line. `flink run` reads it while building the job; it goes after.
    config = write_private_file(
        settings.run_dir / f"{NAME}.config.json", JobConfig.from_settings(settings).model_dump_json()
    )
    argv = flink.submit_argv(
        settings, JOB_SCRIPT, "--config-file", str(config), "--parallelism", str(flink.job_parallelism(settings)),
        "--batch-size", str(settings.flink.score_batch_size), "--max-wait-ms", str(settings.flink.score_max_wait_ms),
        restore_from=snapshot.path if snapshot else None,
    )
    log_path = settings.log_dir / f"{NAME}-submit.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_start = log_path.stat().st_size if log_path.exists() else 0
    try:
        with open(log_path, "ab") as log:
            done = subprocess.run(
                argv, env={**_os_env(), **flink.flink_env(settings)}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=SUBMIT_TIMEOUT_SECONDS, check=False,
            )
    finally:
        config.unlink(missing_ok=True)
    if done.returncode != 0:
        if snapshot is not None:
            raise RestoreFailed(f"flink run -s failed (exit {done.returncode}): {_root_cause_in(log_path, log_start)}")
        raise ComponentFailed(f"flink run failed (exit {done.returncode}); see {log_path}\n{_tail(log_path)}")

    def progress() -> Health:
        ours = [j for j in rest.jobs() if j.name == job_name() and j.jid not in before]
        if snapshot is not None:
            for job in ours:
                # A restore that fails while the tasks start is retried by Flink for ever.
                if job.state in ("RESTARTING", "FAILING", "FAILED"):
                    if job.state != "FAILED":
                        rest.cancel(job.jid)
                    raise RestoreFailed(f"the job went {job.state}: {_root_cause(rest, job.jid)}")
        return health(settings)

    current = poll_until(progress, timeout=SUBMIT_TIMEOUT_SECONDS, interval=1, done=lambda h: h.ok,
                         on_wait=lambda h: report(h.detail))
    if not current.ok:
        raise ComponentFailed(f"{job_name()} submitted but not RUNNING after {SUBMIT_TIMEOUT_SECONDS}s")
    return current.data.get("jid") if current.data else None


def _root_cause(rest: FlinkRest, jid: str) -> str:
    try:
        return rest.root_exception(jid) or "no exception recorded"
    except (httpx.HTTPError, OSError) as exc:
        return f"its exceptions are unreadable ({exc})"


def _root_cause_in(log_path: Path, start: int) -> str:
    """The innermost Java cause that ``flink run`` printed from byte ``start`` of its log on."""
    try:
        with open(log_path, "rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
    except OSError:
        return f"see {log_path}"
    causes = [
        line.strip().removeprefix("Caused by: ") for line in text.splitlines()
        if line.startswith("Caused by: ") and "Python process exits" not in line
    ]
    return causes[-1][:300] if causes else f"see {log_path}"


def prepare_scorer_model(settings: QactlSettings, report: Report) -> None:
    """Export the scorer's encoder to ONNX once per machine, before the job needs it.

    Otherwise the job's first Python worker exports it while the first answers wait (10-15 s).
    Not fatal when it fails: the worker then runs the encoder in torch and logs why.
    """
    from flink.onnx_encoder import onnx_path
    from flink.scoring import Calibration

    path = onnx_path(Calibration.load().num_layers, settings.cache_dir)
    if path.is_file():
        return
    report(f"exporting the scorer's encoder to ONNX, once per machine ({path.name})")
    try:
        done = subprocess.run(
            [flink.python_executable(), "-c", "from flink.scoring import Scorer; print(Scorer().backend)"],
            env={**_os_env(), "QACTL_CACHE_DIR": str(settings.cache_dir)}, cwd=JOB_SCRIPT.parents[1],
            capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_SECONDS, check=False,
        )
        output = (done.stderr or done.stdout).strip()
    except subprocess.TimeoutExpired:
        output = f"no result after {SUBMIT_TIMEOUT_SECONDS} s"
    if not path.is_file():
        last = output.splitlines()[-1:] or ["no output"]
        report(f"scorer encoder not exported; the job will run it in torch ({last[0]})")


def stop(settings: QactlSettings, report: Report) -> None:
    """Stop the job with a savepoint that `qactl up` resumes from; cancel it if none can be taken.

    A cancelled job leaves its latest checkpoint (retained on cancellation), so `up` resumes
    from that one instead.
    """
    rest = FlinkRest(settings.flink.rest)
    try:
        jobs = live_jobs(rest)
    except (httpx.HTTPError, OSError):
        return  # no cluster, no job
    for job in jobs:
        if job.state == "RUNNING" and job.all_tasks_running:
            report(f"stopping {job.name} ({job.jid}) with a savepoint")
            try:
                location = _stop_with_savepoint(rest, job.jid, settings)
            except (httpx.HTTPError, ComponentFailed) as exc:
                report(f"no savepoint ({exc}); cancelling: `qactl up` resumes from the latest retained checkpoint")
            else:
                report(f"savepoint written: {location}; `qactl up` resumes from it")
                continue
        else:
            report(f"{job.name} is {job.state}, no savepoint possible; cancelling: "
                   "`qactl up` resumes from the latest retained checkpoint")
        rest.cancel(job.jid)


def _stop_with_savepoint(rest: FlinkRest, jid: str, settings: QactlSettings) -> str:
    trigger = rest.stop_with_savepoint(jid, flink.savepoints_dir(settings).as_uri())
    status = poll_until(lambda: rest.savepoint_status(jid, trigger), timeout=STOP_TIMEOUT_SECONDS,
                        interval=0.5, done=lambda s: s.done)
    if not status.done:
        raise ComponentFailed(f"no savepoint after {STOP_TIMEOUT_SECONDS}s")
    if not status.succeeded:
        raise ComponentFailed(status.failure or "savepoint failed")
    gone = poll_until(lambda: all(j.jid != jid for j in live_jobs(rest)), timeout=60, interval=0.5, done=bool)
    if not gone:
        raise ComponentFailed("savepoint written but the job did not stop")
    return status.location.removeprefix("file:")


def _os_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def components(settings: QactlSettings) -> list[Component]:
    return [
        Component(
            name=NAME,
            kind="job",
            health=lambda: health(settings),
            after_start=lambda report: submit(settings, report),
            before_stop=lambda report: stop(settings, report),
            endpoint=f"{settings.flink.rest}/#/overview",
        )
    ]
