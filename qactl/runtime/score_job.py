"""The Flink scoring job as a component: submitted once by `qactl up`, cancelled by `qactl down`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from qactl.client.flink_rest import FlinkRest
from qactl.errors import ComponentFailed
from qactl.runtime import flink
from qactl.runtime.component import Component, Report
from qactl.runtime.supervisor import Health
from services.common.settings import QactlSettings, write_private_file
from services.common.waiting import poll_until

NAME = "score-job"
JOB_SCRIPT = Path(__file__).resolve().parents[2] / "flink" / "job.py"
# States in which a job counts as "the one instance": submitting again would make a second.
LIVE_STATES = {"CREATED", "INITIALIZING", "RUNNING", "RESTARTING", "RECONCILING"}
SUBMIT_TIMEOUT_SECONDS = 240


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
    detail = f"{job.name} {job.state} (id {job.jid})"
    if len(jobs) > 1:
        return Health(False, f"{len(jobs)} instances of {job.name}: expected one", {"jobs": [j.jid for j in jobs]})
    if job.state == "RUNNING" and not job.all_tasks_running:
        running, total = job.tasks.get("running", 0), job.tasks.get("total", 0)
        return Health(False, f"{detail}, {running}/{total} tasks running", {"jid": job.jid, "state": job.state})
    return Health(job.state == "RUNNING", detail, {"jid": job.jid, "state": job.state})


def submit(settings: QactlSettings, report: Report) -> bool:
    """Submit the job unless an instance is already live; wait until it runs. True if submitted."""
    from flink.gate import JobConfig

    rest = FlinkRest(settings.flink.rest)
    if live_jobs(rest):
        return False
    prepare_scorer_model(settings, report)
    report(f"submitting {job_name()} (flink run)")
    # A file, not an argument: the configuration may hold secrets (the Redis URL), and every
    # user sees a command line. `flink run` reads it while building the job; it goes after.
    config = write_private_file(
        settings.run_dir / f"{NAME}.config.json", JobConfig.from_settings(settings).model_dump_json()
    )
    argv = flink.submit_argv(
        settings, JOB_SCRIPT, "--config-file", str(config), "--parallelism", str(flink.job_parallelism(settings))
    )
    log_path = settings.log_dir / f"{NAME}-submit.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log_path, "ab") as log:
            done = subprocess.run(
                argv, env={**_os_env(), **flink.flink_env(settings)}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=SUBMIT_TIMEOUT_SECONDS, check=False,
            )
    finally:
        config.unlink(missing_ok=True)
    if done.returncode != 0:
        raise ComponentFailed(f"flink run failed (exit {done.returncode}); see {log_path}\n{_tail(log_path)}")
    current = poll_until(
        lambda: health(settings),
        timeout=SUBMIT_TIMEOUT_SECONDS,
        interval=1,
        done=lambda h: h.ok,
        on_wait=lambda h: report(h.detail),
    )
    if current.ok:
        return True
    raise ComponentFailed(f"{job_name()} submitted but not RUNNING after {SUBMIT_TIMEOUT_SECONDS}s")


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


def cancel(settings: QactlSettings, report: Report) -> None:
    rest = FlinkRest(settings.flink.rest)
    try:
        jobs = live_jobs(rest)
    except (httpx.HTTPError, OSError):
        return  # no cluster, no job
    for job in jobs:
        report(f"cancelling {job.name} ({job.jid})")
        rest.cancel(job.jid)


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
            before_stop=lambda report: cancel(settings, report),
            endpoint=f"{settings.flink.rest}/#/overview",
        )
    ]
