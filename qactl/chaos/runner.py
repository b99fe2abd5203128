"""One chaos experiment, start to end, on the running stack.

1. Traffic: questions unique to this run (tagged, so neither the cache nor the coalescing of
   identical questions answers them) sent at a rate by the traffic generator, each followed.
2. Fault, once a third of the questions have been sent: how many were accepted and not yet
   terminal at that moment is recorded (an experiment with nothing in flight proves nothing and
   says so). The fault is held, then restored.
3. Recovery: every component healthy again, by itself (the supervisor) within a bound, else by
   `qactl up` as a user would; which one did it is recorded.
4. Settle and check: every accepted question terminal once in PostgreSQL (waiting up to a
   bound for the open ones), every component healthy, every pipeline consumer group drained, no
   process left behind.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from qactl.chaos import invariant, stack_checks, store
from qactl.chaos.experiments import Experiment
from qactl.chaos.faults import FaultContext, FaultNotApplicable
from qactl.client import pg
from qactl.client.gateway import GatewayClient
from qactl.errors import QactlError, StackNotRunning
from qactl.runtime.stack import Stack
from qactl.traffic import questions as question_sets
from qactl.traffic.runner import RunResult, run_async
from services.common.settings import QactlSettings
from services.common.waiting import Deadline, poll_until

# (experiment, phase, detail): progress for the CLI.
Events = Callable[[str, str, str], None]


def _quiet(experiment: str, phase: str, detail: str) -> None:
    return None


@dataclass(frozen=True)
class RunOptions:
    questions: int = 200
    rate: float = 5.0
    time_scale: float = 1.0  # multiplies every fault's duration
    recover_seconds: float = 120.0  # how long the stack may take to come back by itself
    settle_seconds: float = 300.0  # how long after the fault accepted questions may stay open
    lag_seconds: float = 60.0  # how long the consumer groups may take to commit what they did
    poll_interval: float = 2.0  # the traffic generator's /status polls of each question


@dataclass
class ExperimentResult:
    experiment: str
    state: str  # passed, violated, error, skipped
    run_id: int | None = None
    fault: str = ""
    in_flight_at_fault: int | None = None
    accepted: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # invariant outcome -> questions
    refused_during_fault: int = 0
    refused_total: int = 0
    recover_seconds: float | None = None
    recovered_by: str | None = None
    unhealthy: list[str] = field(default_factory=list)
    lagging_groups: list[str] = field(default_factory=list)
    leftovers: list[str] | None = None  # None: not checked (the experiment did not get that far)
    violations: list[str] = field(default_factory=list)
    fault_window: tuple[datetime, datetime] | None = None  # from the fault until healthy again

    @property
    def ok(self) -> bool:
        return self.state in ("passed", "skipped")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _Traffic:
    """The traffic generator in a thread of its own, so the fault can be applied meanwhile."""

    def __init__(self, settings: QactlSettings, questions: list[question_sets.TrafficQuestion], options: RunOptions) -> None:
        self.result: RunResult | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = asyncio.run(
                    run_async(
                        settings,
                        questions,
                        options.rate,
                        poll_interval=options.poll_interval,
                        timeout=options.settle_seconds,
                        api_down_is_refusal=True,
                    )
                )
            except BaseException as exc:  # reported as the experiment's error
                self.error = exc

        self.thread = threading.Thread(target=run, name="chaos-traffic", daemon=True)
        self.thread.start()


def run_experiment(
    settings: QactlSettings,
    experiment: Experiment,
    options: RunOptions,
    events: Events = _quiet,
    stack: Stack | None = None,
) -> ExperimentResult:
    stack = stack or Stack(settings)
    say = lambda phase, detail: events(experiment.name, phase, detail)  # noqa: E731
    ctx = FaultContext(stack)
    result = ExperimentResult(experiment.name, state="running")
    try:
        experiment.fault.check(ctx)
        if experiment.background is not None:
            ctx.spec("llm-gateway")
    except FaultNotApplicable as exc:
        result.state = "skipped"
        result.fault = str(exc)
        say("skipped", str(exc))
        return result
    _ready(stack)
    if experiment.background is not None:
        with ctx.gateway() as gateway:
            gateway.add_rule(experiment.background)
    dsn = settings.postgres.url
    result.run_id = store.start(dsn, experiment.name, experiment.description, options.questions, options.rate)
    tag = f"chaos{secrets.token_hex(4)}"
    chosen = question_sets.tagged(
        question_sets.take(question_sets.knowledge_base_questions(), options.questions), tag
    )
    say("traffic", f"{len(chosen)} questions at {options.rate:g}/s, tagged {tag}")
    traffic = _Traffic(settings, chosen, options)
    try:
        _fault_and_recover(settings, stack, experiment, options, ctx, traffic, tag, result, say)
    except QactlError as exc:
        result.violations.append(f"the experiment could not be carried out: {exc}")
        result.state = "error"
    traffic.thread.join(timeout=options.settle_seconds + 60)
    if traffic.thread.is_alive():  # its questions still followed: none can be counted or checked
        result.violations.append(
            f"the traffic generator was still following its questions {options.settle_seconds + 60:.0f} s after the "
            "fault: the stack did not keep up (a lower --rate, or a longer --settle-seconds)"
        )
    _settle_and_check(settings, stack, options, traffic, result, say)
    if result.state != "error":
        result.state = "violated" if result.violations else "passed"
    store.finish(
        dsn,
        result.run_id,
        state=result.state,
        accepted=result.accepted,
        terminal_once=result.counts.get("terminal_once", 0),
        stuck=result.counts.get("stuck", 0) + result.counts.get("inconsistent", 0),
        duplicated=result.counts.get("duplicated", 0),
        lost=result.counts.get("missing", 0),
        refused_during_fault=result.refused_during_fault,
        refused_total=result.refused_total,
        recover_seconds=result.recover_seconds,
        recovered_by=result.recovered_by,
        unhealthy=result.unhealthy,
        lagging_groups=result.lagging_groups,
        leftover_processes=result.leftovers or [],
        violations=result.violations,
        detail={"fault": result.fault, "tag": tag, "counts": result.counts, "leftovers_checked": result.leftovers is not None},
    )
    say(result.state, "; ".join(result.violations) or "every accepted question terminal once")
    return result


def _ready(stack: Stack) -> None:
    """The stack healthy and the gateway without rules before the experiment: an experiment on
    a broken stack would judge the breakage, not the fault."""
    bad = stack_checks.unhealthy(stack)
    if bad:
        raise StackNotRunning(f"the stack is not healthy ({'; '.join(bad)}); `qactl up` first")
    if any(c.name == "llm-gateway" for c in stack.components):
        with GatewayClient.from_settings(stack.settings) as gateway:
            gateway.clear_faults()


def _fault_and_recover(
    settings: QactlSettings,
    stack: Stack,
    experiment: Experiment,
    options: RunOptions,
    ctx: FaultContext,
    traffic: _Traffic,
    tag: str,
    result: ExperimentResult,
    say: Callable[[str, str], None],
) -> None:
    dsn = settings.postgres.url
    # A third of the questions sent: some answered, some in flight, more to come during the fault.
    sending = Deadline(options.questions / options.rate)
    traffic.thread.join(timeout=sending.seconds / 3)
    try:
        conn = pg.connect(dsn, timeout=3.0, application_name=store.APP)
        conn.set_session(autocommit=True)
        try:
            # A fast LLM may have answered all so far: wait (while sending) for one in flight.
            result.in_flight_at_fault = poll_until(
                lambda: invariant.open_questions(conn, tag), timeout=max(sending.left(), 0.0), interval=0.1
            )
        finally:
            conn.close()
    except Exception as exc:  # the count is evidence, not a precondition
        say("fault", f"cannot count the questions in flight: {exc}")
    fault_at = _now()
    store.update(dsn, result.run_id, phase="fault", fault_at=fault_at, in_flight_at_fault=result.in_flight_at_fault)
    clock = Deadline(0)  # counts the time since the fault
    try:
        result.fault = experiment.fault.apply(ctx)
        say("fault", f"{result.fault}; {result.in_flight_at_fault} questions in flight")
        hold = experiment.hold_seconds(options.time_scale)
        if hold:
            say("fault", f"held {hold:.0f} s")
            time.sleep(hold)
    finally:
        restored_by = _restore(experiment, ctx, result, say)
    restored_at = _now()
    if restored_by:
        say("restore", restored_by)
    store.update(dsn, result.run_id, phase="recover", restored_at=restored_at)
    still_bad = poll_until(
        lambda: stack_checks.unhealthy(stack), timeout=options.recover_seconds, interval=1.0, done=lambda bad: not bad
    )
    if still_bad:
        say("recover", f"not healthy {options.recover_seconds:.0f} s after the fault ({'; '.join(still_bad)}): qactl up")
        try:
            stack.up()
        except QactlError as exc:
            # What a user would see; the stack may still heal (a job restarting): wait once more.
            failure = str(exc).splitlines()[0]
            result.violations.append(f"qactl up failed after the fault: {failure}")
            say("recover", f"qactl up failed: {failure}")
            still_bad = poll_until(
                lambda: stack_checks.unhealthy(stack), timeout=options.recover_seconds, interval=1.0, done=lambda bad: not bad
            )
        else:
            still_bad = []
        result.recovered_by = "qactl up" if not still_bad else "not recovered"
    else:
        result.recovered_by = restored_by or "supervisor"
    result.recover_seconds = round(clock.elapsed(), 1)
    recovered_at = _now()
    if result.recovered_by == "not recovered":
        say("recover", f"still not healthy {result.recover_seconds:.0f} s after the fault")
    else:
        say("recover", f"healthy again after {result.recover_seconds:.0f} s ({result.recovered_by})")
    store.update(dsn, result.run_id, phase="settle", recover_seconds=result.recover_seconds, recovered_by=result.recovered_by)
    result.fault_window = (fault_at, recovered_at)


def _restore(experiment: Experiment, ctx: FaultContext, result: ExperimentResult, say: Callable[[str, str], None]) -> str | None:
    """Undo the fault (and the background rule); a restoration that fails is a finding, and the
    recovery that follows gets its chance."""
    try:
        if experiment.background is not None:
            with ctx.gateway() as gateway:
                gateway.clear_faults()
        return experiment.fault.restore(ctx)
    except QactlError as exc:
        failure = str(exc).splitlines()[0]
        result.violations.append(f"restoring ({experiment.restored_by}) failed: {failure}")
        say("restore", f"failed: {failure}")
        return None


def _settle_and_check(
    settings: QactlSettings,
    stack: Stack,
    options: RunOptions,
    traffic: _Traffic,
    result: ExperimentResult,
    say: Callable[[str, str], None],
) -> None:
    if traffic.error is not None:
        result.violations.append(f"traffic generator failed: {traffic.error}")
    samples = traffic.result.samples if traffic.result is not None else []
    accepted = [s.question_id for s in samples if s.http_status == 202 and s.question_id]
    refused = [s for s in samples if s.http_status not in (200, 202)]
    result.accepted = len(accepted)
    result.refused_total = len(refused)
    if result.fault_window is not None:
        start, end = result.fault_window
        result.refused_during_fault = sum(1 for s in refused if start <= s.sent_at <= end)
    if result.in_flight_at_fault == 0:
        result.violations.append("no question was in flight at the fault: the experiment proves nothing")
    dsn = settings.postgres.url
    say("check", f"{len(accepted)} accepted; waiting up to {options.settle_seconds:.0f} s for each to end")
    conn = pg.connect_to_stack(dsn, store.APP)
    try:
        conn.set_session(autocommit=True)
        verdict = poll_until(
            lambda: invariant.check(conn, accepted), timeout=options.settle_seconds, interval=2.0, done=lambda v: v.open == 0
        )
    finally:
        conn.close()
    result.counts = {o: verdict.count(o) for o in invariant.OUTCOMES}
    result.violations.extend(verdict.violations)
    result.unhealthy = stack_checks.unhealthy(stack)
    result.violations.extend(f"unhealthy at the end: {u}" for u in result.unhealthy)
    result.lagging_groups = poll_until(
        lambda: _lag(settings), timeout=options.lag_seconds, interval=2.0, done=lambda behind: not behind
    )
    result.violations.extend(f"consumer group not drained: {g}" for g in result.lagging_groups)
    result.leftovers = stack_checks.leftover_processes(stack)
    result.violations.extend(f"leftover process: {p}" for p in result.leftovers or [])


def _lag(settings: QactlSettings) -> list[str]:
    try:
        return stack_checks.lagging_groups(settings.kafka.bootstrap)
    except Exception as exc:  # Kafka not answering is itself a finding
        return [f"cannot read consumer lag: {exc}"]
