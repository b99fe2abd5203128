"""Run demo cases against the stack `qactl up` started: inject, submit, follow, compare.

UI-free: everything the operator should see is sent as a ``DemoEvent`` to a callback (the CLI
narrates them with Rich; the dashboard turns a case into one line), and a ``CaseResult`` says
whether the expected path happened, check by check.

With a real model (any backend but the simulator) a case's path is certain only as far as its
faults force it: up to the first answer the model writes itself. From there the runner checks
that the gate judged by its rules, says in the narration that the model's answer now decides,
and reports what the gate decided (``model_decided_from``, ``answers``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from qactl.client.api import QuestionStatus, StorageApiClient, Submission
from qactl.client.fault_presets import describe_rule
from qactl.client.gateway import GatewayClient
from qactl.demo import stack_access
from qactl.demo.cases import Ask, Case, load_cases
from qactl.demo.paths import (
    Judgement,
    compare,
    explain,
    gate_verdict,
    hop_label,
    judgements,
    model_call_bounds,
    model_split,
    observed_path,
    policy_delay_bounds,
)
from qactl.errors import QactlError, StackNotRunning
from services.common.schemas import Hop, Stage, normalize_question, question_id_for
from services.common.settings import Policies, QactlSettings
from services.common.waiting import poll_until
from services.llm_gateway.faults import FaultRule

EventKind = Literal[
    "case", "info", "warning", "faults", "submit", "hop", "model", "terminal", "answer", "check", "result"
]

# How long to wait, after a terminal state, for the persister to have stored it (and cached it).
STORED_WAIT_SECONDS = 20.0


@dataclass
class DemoEvent:
    kind: EventKind
    case: str
    message: str
    hop: Hop | None = None
    explanation: str | None = None
    elapsed: float | None = None
    ok: bool | None = None


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class AskResult:
    question: str
    question_id: str
    http_status: int | None = None
    source: str | None = None
    perceived_ms: float | None = None
    state: str | None = None
    score: float | None = None
    reason: str | None = None
    answer: str | None = None
    model: str | None = None  # who wrote the answer: the model's name, or the degrade fault's label
    # The certain part of the path: all of it with the simulator; with a real model, the hops
    # before model_decided_from (the scoring hop of the first answer the model wrote itself).
    expected_path: list[str] = field(default_factory=list)
    observed_path: list[str] = field(default_factory=list)
    model_decided_from: int | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)  # the gate's decisions, forced or the model's
    hops: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


@dataclass
class CaseResult:
    name: str
    title: str
    delay_scale: float
    delays_shortened: bool
    policy_source: str
    backend: str = "simulated"
    backend_source: str = ""
    asks: list[AskResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.asks) and all(a.ok for a in self.asks)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        for ask, raw in zip(self.asks, data["asks"]):
            raw["ok"] = ask.ok
        return data


Listener = Callable[[DemoEvent], None]


def _ignore(_: DemoEvent) -> None:
    return None


def expected_wait_seconds(ask: Ask, policies: Policies) -> float:
    """The longest the policy delays of the expected path may add up to."""
    total = 0.0
    for step in ask.expect.path:
        if step.delay is None or step.topic is None:
            continue
        bounds = policy_delay_bounds(Hop(stage=step.stage, topic=step.topic), policies)
        if bounds is not None:
            total += bounds[1]
    # Retry-After is honoured unscaled and may be longer than the policy's delay.
    total += sum((f.retry_after or 0.0) * (f.count or 1) for f in ask.faults)
    return total


class DemoRunner:
    def __init__(
        self,
        settings: QactlSettings,
        listener: Listener = _ignore,
        poll_interval: float = 0.25,
    ) -> None:
        self.settings = settings
        self.emit = listener
        self.poll_interval = poll_interval
        self._running: stack_access.RunningPolicies | None = None
        self._backend: stack_access.RunningBackend | None = None

    # --- preflight ------------------------------------------------------------------------

    def preflight(self, cases: list[Case]) -> stack_access.RunningPolicies:
        """The stack must be up (the API accepting questions; the gateway when faults are used)."""
        with StorageApiClient(self.settings.api.base_url, timeout=5.0) as api:
            health = api.health()  # raises StackNotRunning when nothing answers
        if not health.ok:
            raise StackNotRunning(f"the storage API is up but not accepting questions: {health.summary}")
        if any(case.has_faults for case in cases):
            with GatewayClient.from_settings(self.settings) as gateway:
                gateway.list_faults()  # raises StackNotRunning with the gateway's address
        self._running = stack_access.running_policies(self.settings)
        self._backend = stack_access.running_backend(self.settings)
        return self._running

    # --- a case ---------------------------------------------------------------------------

    def run_case(self, case: Case) -> CaseResult:
        running = self._running or self.preflight([case])
        backend = self._backend = self._backend or stack_access.running_backend(self.settings)
        policies = running.policies
        result = CaseResult(
            case.name, case.title, policies.delay_scale, policies.shortened, running.source, backend.kind, backend.source
        )
        started = time.monotonic()
        self.emit(DemoEvent("case", case.name, case.title))
        if case.summary:
            self.emit(DemoEvent("info", case.name, case.summary))
        self._announce_backend(case, backend, policies)
        self._announce_delays(case, policies, running.source, result)
        tag = f"demo {case.name} {secrets.token_hex(3)}" if case.unique else None
        if tag is not None:
            self.emit(DemoEvent("info", case.name, f"questions tagged ({tag}) so the whole path runs, not an earlier answer"))
        for index, ask in enumerate(case.asks, start=1):
            if len(case.asks) > 1:
                self.emit(DemoEvent("info", case.name, f"ask {index} of {len(case.asks)}"))
            question = asked_as(ask.question, tag)
            earlier = next((a for a in reversed(result.asks) if a.question == question), None)
            result.asks.append(self._run_ask(case, ask, question, policies, backend, earlier, result))
        result.seconds = time.monotonic() - started
        verdict = "the expected path happened" if result.ok else "the expected path did NOT happen"
        self.emit(DemoEvent("result", case.name, f"{case.name}: {verdict} ({result.seconds:.1f} s)", ok=result.ok))
        return result

    def _announce_backend(self, case: Case, backend: stack_access.RunningBackend, policies: Policies) -> None:
        if not backend.real:
            self.emit(DemoEvent("info", case.name, f"backend simulated [{backend.source}]: every answer is certain"))
            return
        said = f"backend {backend.kind} [{backend.source}]: a real model writes every answer no fault forces"
        if not any(model_split(a.expect.path, a.forced_answers) is not None for a in case.asks):
            said += "; here the faults force every step, so the whole path is certain"
        else:
            forced = "only what the faults force is certain" if case.has_faults else "no fault forces anything"
            said += (
                f"; {forced}, and from the model's first own answer the gate decides "
                f"(threshold {policies.quality_threshold:g}, up to {policies.max_regenerations} regenerations)"
            )
        self.emit(DemoEvent("info", case.name, said))

    def _announce_delays(self, case: Case, policies: Policies, source: str, result: CaseResult) -> None:
        waits = sum(expected_wait_seconds(a, policies) for a in case.asks)
        if policies.shortened:
            self.emit(
                DemoEvent(
                    "warning",
                    case.name,
                    f"demo profile: every retry delay is shortened x{policies.delay_scale:g} "
                    f"(overload 2^n s -> {policies.overload_delay_seconds(0):.3g} s, {policies.overload_delay_seconds(1):.3g} s, ...; "
                    f"quota {policies.quota_delay_seconds:g} s -> {policies.quota_delay():.3g} s) [{source}]",
                )
            )
        elif case.delays.profile == "demo":
            message = (
                f"this case is written for the demo profile, and the stack runs the full policy delays [{source}]: "
                f"expect about {waits:.0f} s of waiting. "
                + (case.delays.note.strip() if case.delays.note else "Start the stack with QACTL_POLICIES__DELAY_SCALE=0.05.")
            )
            result.warnings.append(message)
            self.emit(DemoEvent("warning", case.name, message))
        elif waits:
            self.emit(DemoEvent("info", case.name, f"full policy delays [{source}]: about {waits:.0f} s of waiting"))

    # --- one ask --------------------------------------------------------------------------

    def _run_ask(
        self,
        case: Case,
        ask: Ask,
        question: str,
        policies: Policies,
        backend: stack_access.RunningBackend,
        earlier: AskResult | None,
        case_result: CaseResult,
    ) -> AskResult:
        # The id of the question alone, until the API names the run it accepted (the reference
        # answer is part of a question's identity, and asking again after low_quality is a new run).
        question_id = question_id_for(question, ask.reference)
        result = AskResult(question=question, question_id=question_id)
        model_from = model_split(ask.expect.path, ask.forced_answers) if backend.real else None
        result.model_decided_from = model_from
        result.expected_path = [s.label for s in ask.expect.path[:model_from]]
        started = time.monotonic()
        gateway = GatewayClient.from_settings(self.settings) if self._gateway_wanted(ask) else None
        try:
            calls_before = self._calls(gateway, question)
            offsets_before = stack_access.pending_end_offsets(self.settings) if ask.expect.kafka_traffic else None
            injected = self._inject(case, ask, question, gateway)
            with StorageApiClient(self.settings.api.base_url) as api:
                submission = api.submit(question, ask.reference)
                question_id = result.question_id = submission.question_id
                self._on_submission(case, ask, submission, result)
                final: QuestionStatus | None = None
                if not submission.answered:
                    timeout = ask.timeout_seconds + expected_wait_seconds(ask, policies)
                    forced = ask.forced_answers if model_from is not None else None
                    if model_from is not None:  # a real model may take its whole time limit on each call
                        calls = model_call_bounds(ask.expect.path, model_from, policies)[1]
                        timeout += calls * self.settings.llm.timeout_seconds
                    elif asked_again_after_low_quality(ask, earlier):  # a new run: the model answers again
                        timeout += (policies.max_regenerations + 1) * self.settings.llm.timeout_seconds
                    final = self._follow(case, api, question_id, policies, timeout, forced)
                    stored = self._wait_stored(api, question_id, final)
                    if stored is not None:
                        final = stored
            if final is not None:
                result.state = final.state.value
                result.score = final.score
                result.reason = final.reason
                result.answer, result.model = final.answer, final.model
                result.hops = [h.model_dump(mode="json", exclude_none=True) for h in final.hops]
                result.answers = [asdict(j) for j in judgements(final.hops, ask.forced_answers)]
            self._check(
                case, ask, question, submission, final, policies, result, gateway, calls_before, offsets_before, earlier
            )
            self._cleanup(case, gateway, injected, case_result)
        finally:
            if gateway is not None:
                gateway.close()
        result.seconds = time.monotonic() - started
        return result

    def _gateway_wanted(self, ask: Ask) -> bool:
        return bool(ask.faults) or ask.expect.llm_calls is not None

    def _calls(self, gateway: GatewayClient | None, question: str) -> int | None:
        """Calls the gateway has seen for this question so far (None without a gateway)."""
        if gateway is None:
            return None
        try:
            stats = gateway.stats()
        except StackNotRunning:
            return None
        return sum(stats.by_question.get(normalize_question(question), {}).values())

    def _inject(self, case: Case, ask: Ask, question: str, gateway: GatewayClient | None) -> list[int]:
        if gateway is None or not ask.faults:
            return []
        target = normalize_question(question)
        leftovers = [
            r for r in gateway.list_faults() if r.match is None or normalize_question(r.match) in target
        ]
        if leftovers:
            cleared = gateway.clear_faults()
            self.emit(
                DemoEvent("warning", case.name, f"cleared {cleared} fault rule(s) left over that would hit this question")
            )
        ids = []
        for fault in ask.faults:
            rule = gateway.add_rule(FaultRule(**fault.rule(question)))
            ids.append(rule.id)
            self.emit(DemoEvent("faults", case.name, f"gateway: {describe_rule(rule)}"))
        return ids

    def _cleanup(self, case: Case, gateway: GatewayClient | None, injected: list[int], result: CaseResult) -> None:
        if gateway is None or not injected:
            return
        left = [r for r in gateway.list_faults() if r.id in injected]
        if left:
            gateway.clear_faults()
            message = f"{len(left)} injected fault rule(s) did not fire as expected; cleared"
            result.warnings.append(message)
            self.emit(DemoEvent("warning", case.name, message))

    def _on_submission(self, case: Case, ask: Ask, submission: Submission, result: AskResult) -> None:
        result.http_status = submission.http_status
        result.source = submission.source
        result.perceived_ms = round(submission.latency_ms, 2)
        if submission.answered:
            self.emit(
                DemoEvent(
                    "submit",
                    case.name,
                    f"POST /query -> 200 in {submission.latency_ms:.1f} ms: answered at once from the "
                    f"{submission.source} ({submission.status}"
                    + (f", score {submission.score:.3f}" if submission.score is not None else "")
                    + ")",
                )
            )
            result.state = submission.status
            result.score = submission.score
            result.answer, result.model = submission.answer, submission.model
        else:
            joined = " (joined an identical question in flight)" if submission.coalesced else ""
            self.emit(
                DemoEvent(
                    "submit",
                    case.name,
                    f"POST /query -> 202 in {submission.latency_ms:.1f} ms as {submission.question_id}{joined}",
                )
            )

    def _follow(
        self,
        case: Case,
        api: StorageApiClient,
        question_id: str,
        policies: Policies,
        timeout: float,
        forced_answers: int | None,
    ) -> QuestionStatus:
        """Follow the question, narrating each new hop, until a terminal state or the timeout.

        ``forced_answers``: with a real model, how many answers faults write; the gate's
        decisions on the model's own answers after them are said so.
        """
        first_at: float | None = None
        judged: list[Judgement] = []

        def narrate(hop: Hop) -> None:
            nonlocal first_at
            first_at = hop.at.timestamp() if first_at is None else first_at
            decided = judgements([hop], forced_answers or 0) if forced_answers is not None else []
            by_model = [j for j in decided if not j.forced]
            self.emit(
                DemoEvent(
                    "hop",
                    case.name,
                    hop_label(hop),
                    hop=hop,
                    # The gate's decision on the model's answer is said on the "model" line below.
                    explanation=None if by_model else explain(hop, policies),
                    elapsed=hop.at.timestamp() - first_at,
                )
            )
            for judgement in by_model:
                self.emit(DemoEvent("model", case.name, model_verdict(hop, judgement, judged, policies), hop=hop))
            judged.extend(decided)

        status = api.follow(question_id, timeout, interval=self.poll_interval, on_hop=narrate)
        if not status.terminal:
            self.emit(DemoEvent("warning", case.name, f"still {status.state.value} after {timeout:.0f} s: giving up"))
        return status

    def _wait_stored(self, api: StorageApiClient, question_id: str, final: QuestionStatus) -> QuestionStatus | None:
        """After a terminal state: wait until PostgreSQL has it (and the cache, for a validated answer:
        the only kind served again)."""
        if not final.terminal:
            return None

        def stored(status: QuestionStatus) -> bool:
            return bool(status.raw.get("terminal_at")) and (
                status.answer is None
                or status.state is not Stage.validated
                or stack_access.cached(self.settings, question_id)
            )

        if stored(final):
            return final
        return poll_until(
            lambda: api.status(question_id), timeout=STORED_WAIT_SECONDS, interval=self.poll_interval, done=stored
        )

    # --- checks ---------------------------------------------------------------------------

    def _check(
        self,
        case: Case,
        ask: Ask,
        question: str,
        submission: Submission,
        final: QuestionStatus | None,
        policies: Policies,
        result: AskResult,
        gateway: GatewayClient | None,
        calls_before: int | None,
        offsets_before: dict[int, int] | None,
        earlier: AskResult | None,
    ) -> None:
        expect = ask.expect
        model_from = result.model_decided_from
        checks = result.checks
        if asked_again_after_low_quality(ask, earlier):
            assert earlier is not None
            # The model's first answer ended low_quality, which is never served again: the repeat is a
            # new run of the question, with its own id, that the model answers again.
            new_run = submission.http_status == 202 and submission.question_id != earlier.question_id
            checks.append(
                Check("response", new_run,
                      f"POST /query answered {submission.http_status} as {submission.question_id}: the first ask ended "
                      f"low_quality, which is not served again, so expected 202 and a new run (not {earlier.question_id})")
            )
            checks.append(
                Check("terminal", result.state in ("validated", "low_quality"),
                      f"terminal state {result.state} of the new run (the model decided it)")
            )
            for check in checks:
                self.emit(DemoEvent("check", case.name, f"{check.name}: {check.detail}", ok=check.ok))
            return
        wanted_status = 200 if expect.response == "answered" else 202
        checks.append(
            Check("response", submission.http_status == wanted_status,
                  f"POST /query answered {submission.http_status}, expected {wanted_status}")
        )
        if expect.source is not None:
            checks.append(
                Check("source", submission.source == expect.source,
                      f"answered from the {submission.source or 'pipeline'}, expected the {expect.source}")
            )
        if final is not None:
            path = compare(expect.path, final.hops, policies, model_from)
            result.observed_path = path.observed
            detail = "observed " + " -> ".join(path.observed) if path.ok else "; ".join(path.problems)
            checks.append(Check("path", path.ok, detail))
            checks.append(
                Check("stored", bool(final.raw.get("terminal_at")),
                      "terminal state stored in PostgreSQL" if final.raw.get("terminal_at")
                      else "the terminal state was not stored in PostgreSQL in time")
            )
        terminal = self._terminal_check(expect.terminal, result, earlier)
        checks.append(terminal)
        if expect.reason_contains is not None:
            reason = result.reason or ""
            checks.append(
                Check("reason", expect.reason_contains.lower() in reason.lower(),
                      f"reason {reason!r}, expected it to mention {expect.reason_contains!r}")
            )
        if expect.llm_calls is not None:
            calls_after = self._calls(gateway, question)
            if calls_before is None or calls_after is None:
                checks.append(Check("llm_calls", True, "not checked: the built-in gateway is not answering"))
            else:
                made = calls_after - calls_before
                if model_from is None:
                    checks.append(
                        Check("llm_calls", made == expect.llm_calls, f"{made} LLM call(s), expected {expect.llm_calls}")
                    )
                else:
                    fewest, most = model_call_bounds(expect.path, model_from, policies)
                    checks.append(
                        Check("llm_calls", fewest <= made <= most,
                              f"{made} LLM call(s), expected {fewest} to {most}: {fewest - 1} forced by faults, "
                              f"the model's first answer, then up to {most - fewest} regeneration(s) the gate may ask for")
                    )
        if offsets_before is not None:
            after = stack_access.pending_end_offsets(self.settings)
            moved = sum(after.values()) - sum(offsets_before.values())
            checks.append(
                Check("kafka_traffic", moved == 0,
                      f"questions-pending end offsets {'unchanged' if moved == 0 else f'moved by {moved}'} "
                      f"({sum(offsets_before.values())} -> {sum(after.values())})")
            )
        if final is not None and final.terminal:
            self.emit(DemoEvent("terminal", case.name, final.state.value, ok=terminal.ok))
        if result.answer is not None:
            kind = self._backend.kind if self._backend is not None else "simulated"
            self.emit(DemoEvent("answer", case.name, answer_line(result.answer, result.model, kind)))
        for check in checks:
            self.emit(DemoEvent("check", case.name, f"{check.name}: {check.detail}", ok=check.ok))

    @staticmethod
    def _terminal_check(expected: str, result: AskResult, earlier: AskResult | None) -> Check:
        """The terminal state: the case's, or, where a real model decided, the gate's verdict."""
        state = result.state
        if result.model_decided_from is not None:
            gate_end = result.observed_path[-1].split(" @ ")[0] if result.observed_path else None
            ok = state in ("validated", "low_quality") and state == gate_end
            return Check(
                "terminal", ok,
                f"terminal state {state}, the gate's verdict on the model's answer "
                f"(validated or low_quality; the simulator's path ends in {expected})",
            )
        if result.source is not None and earlier is not None and earlier.model_decided_from is not None:
            return Check(
                "terminal", state == earlier.state,
                f"terminal state {state}, expected {earlier.state} as the first ask ended (the model decided it)",
            )
        return Check("terminal", state == expected, f"terminal state {state}, expected {expected}")


def asked_again_after_low_quality(ask: Ask, earlier: AskResult | None) -> bool:
    """An ask that expects a stored answer, of a question whose earlier ask a real model ended
    low_quality: only validated answers are served again, so it runs again instead."""
    return (
        ask.expect.response == "answered"
        and earlier is not None
        and earlier.model_decided_from is not None
        and earlier.state == Stage.low_quality.value
    )


def model_verdict(hop: Hop, judgement: Judgement, before: list[Judgement], policies: Policies) -> str:
    """The narration of the gate's decision on an answer the model wrote itself."""
    first = not any(not j.forced for j in before)
    text = (
        f"from here the real model's answer decides: {gate_verdict(hop, policies)}"
        if first
        else f"the model's regenerated answer (attempt {judgement.attempt}): {gate_verdict(hop, policies)}"
    )
    previous = next((j for j in reversed(before) if j.score is not None), None)
    if previous is not None and judgement.score is not None:
        whose = "the forced off-topic answer" if previous.forced else "its previous answer"
        text += f" ({whose} scored {previous.score:.3f}: {judgement.score - previous.score:+.3f})"
    return text


def answer_line(answer: str, model: str | None, backend: str, width: int = 160) -> str:
    """An answer as the narration shows it, with who wrote it: a canned text is never the model's."""
    from services.llm_gateway.app import DEGRADED_MODEL

    flat = " ".join(answer.split())
    shown = flat if len(flat) <= width else flat[: width - 1] + "…"
    if model == DEGRADED_MODEL:
        who = f"{model} (canned off-topic text from the degrade fault, not the model's)"
    elif backend == "simulated":
        who = f"{model or 'the simulator'} (the simulator's canned text)"
    else:
        who = model or backend
    return f"by {who}: \"{shown}\""


def asked_as(question: str, tag: str | None) -> str:
    """The question as this run asks it: with the run's tag, when the case wants unique questions."""
    return f"{question} ({tag})" if tag else question


def run_cases(settings: QactlSettings, names: list[str], listener: Listener = _ignore) -> list[CaseResult]:
    cases = load_cases(names)
    runner = DemoRunner(settings, listener)
    runner.preflight(cases)
    return [runner.run_case(case) for case in cases]


class StackDemoFirer:
    """The dashboard's ``DemoFirer``: run a case (or ``all``) to its end, one line back."""

    def __init__(self, settings: QactlSettings) -> None:
        self.settings = settings

    def fire(self, case: str) -> str:
        try:
            results = run_cases(self.settings, [case])
        except QactlError as exc:
            return f"demo {case}: {exc}"
        parts = [
            f"{r.name} {'ok' if r.ok else 'FAILED'} ({r.asks[-1].state if r.asks else '-'}, {r.seconds:.1f} s)"
            for r in results
        ]
        return "demo " + "; ".join(parts)


__all__ = ["DemoRunner", "DemoEvent", "CaseResult", "AskResult", "Check", "run_cases", "StackDemoFirer", "observed_path"]
