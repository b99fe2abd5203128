"""Observed hops against a case's expected path, and what each hop means under the policies.

Pure functions of hops, steps and policies (no I/O), shared by the demo runner, its narration
and the tests. With a real model a path is expected exactly only as far as the faults force it
(``model_split``); from the model's first own answer on, the hops must follow the gate's rules
(``gate_problems``), whatever it decides (``judgements``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qactl.demo.cases import PathStep
from services.common.schemas import Hop, Stage
from services.common.settings import Policies

# Lateness tolerated between a retry's due time and the moment a due check sees it: the check
# compares the delay *chosen* with the policy, and the time *waited* with the delay chosen.
WAIT_SLACK_SECONDS = 0.05


def hop_label(hop: Hop) -> str:
    return f"{hop.stage.value} @ {hop.topic}" if hop.topic else hop.stage.value


def _key(hop: Hop) -> tuple[str, str | None, int]:
    return (hop.stage.value, hop.topic, hop.attempt)


def observed_path(hops: list[Hop]) -> list[Hop]:
    """The hops in time order, an immediately repeated hop counted once.

    At-least-once delivery may record the same hop twice (a consumer redelivered after a crash
    produces the same outcome again); the path the question took is the same.
    """
    ordered = sorted(hops, key=lambda h: h.at)
    path: list[Hop] = []
    for hop in ordered:
        if path and _key(path[-1]) == _key(hop):
            continue
        path.append(hop)
    return path


def policy_delay_bounds(hop: Hop, policies: Policies) -> tuple[float, float, str] | None:
    """(lowest, highest, explanation) of the delay the policy allows for a delay-topic hop."""
    topic = hop.topic or ""
    scale = policies.delay_scale
    shortened = f" x {scale:g} (demo profile: shortened)" if policies.shortened else ""
    if topic.startswith("retry-overload-delay-"):
        level = int(topic.rsplit("-", 1)[1])
        nominal = policies.overload_delay_seconds(level)
        spread = nominal * policies.overload_jitter_fraction
        text = (
            f"overload policy: {policies.overload_base_seconds:g}^{level} s{shortened} = {nominal:.3g} s "
            f"+-{policies.overload_jitter_fraction:.0%} jitter"
        )
        return nominal - spread, nominal + spread, text
    if topic == "retry-quota-delay":
        nominal = policies.quota_delay()
        text = f"quota policy: fixed {policies.quota_delay_seconds:g} s{shortened} = {nominal:.3g} s"
        return nominal, nominal, text
    return None


def explain(hop: Hop, policies: Policies) -> str | None:
    """What the policies made of this hop: the delay chosen and why, the score against the threshold."""
    bounds = policy_delay_bounds(hop, policies)
    if bounds is not None and hop.delay_seconds is not None:
        low, high, text = bounds
        chosen = f"chose {hop.delay_seconds:.3f} s"
        if hop.error is not None and hop.error.retry_after_seconds is not None and hop.delay_seconds > high:
            chosen += f" (the LLM's Retry-After {hop.error.retry_after_seconds:g} s is longer and wins)"
        return f"{text} -> {chosen}"
    if hop.stage is Stage.queued and hop.delay_seconds is not None:
        return f"waited {hop.delay_seconds:.3f} s on the delay topic"
    if hop.score is not None:
        threshold = policies.quality_threshold
        if hop.stage is Stage.validated:
            return f"score {hop.score:.3f} > threshold {threshold:g}: validated"
        if hop.stage is Stage.regenerating:
            return (
                f"score {hop.score:.3f} <= threshold {threshold:g}: regenerate "
                f"(attempt {hop.attempt} of {policies.max_regenerations})"
            )
        if hop.stage is Stage.low_quality:
            return f"score {hop.score:.3f} <= threshold {threshold:g} and no regeneration left: low quality"
    return None


def gate_verdict(hop: Hop, policies: Policies) -> str:
    """The gate's decision at a validated, regenerating or low_quality hop, in one phrase."""
    threshold = policies.quality_threshold
    if hop.score is None:
        return f"{hop.stage.value}, no score recorded"
    if hop.stage is Stage.validated:
        return f"score {hop.score:.3f} > {threshold:g} -> validated"
    if hop.stage is Stage.regenerating:
        return (
            f"score {hop.score:.3f} <= {threshold:g} -> regenerate "
            f"(attempt {hop.attempt} of {policies.max_regenerations})"
        )
    return f"score {hop.score:.3f} <= {threshold:g}, no regeneration left -> low quality"


@dataclass(frozen=True)
class Judgement:
    """One answer the gate judged: its attempt, score and decision, and whether a fault wrote it."""

    attempt: int
    score: float | None
    decision: str  # validated, regenerating or low_quality
    forced: bool


@dataclass
class PathCheck:
    expected: list[str]
    observed: list[str]
    problems: list[str] = field(default_factory=list)
    # With a real model: the index of the observed hop from which the gate judges the model's
    # own answers (the expected path is checked exactly before it, the gate's rules from it on).
    model_decided_from: int | None = None
    judged: list[Judgement] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_step(step: PathStep, hop: Hop, policies: Policies, previous: Hop | None) -> list[str]:
    problems = []
    where = f"hop {hop_label(hop)}"
    if step.attempt is not None and hop.attempt != step.attempt:
        problems.append(f"{where}: attempt {hop.attempt}, expected {step.attempt}")
    if step.score is not None:
        threshold = policies.quality_threshold
        if hop.score is None:
            problems.append(f"{where}: no score recorded, expected one {step.score} the threshold")
        elif step.score == "above" and not hop.score > threshold:
            problems.append(f"{where}: score {hop.score:.3f} is not above the threshold {threshold:g}")
        elif step.score == "below" and not hop.score <= threshold:
            problems.append(f"{where}: score {hop.score:.3f} is above the threshold {threshold:g}")
    if step.error is not None:
        error = hop.error
        seen = {error.kind.value, str(error.status_code)} if error is not None else set()
        if step.error not in seen:
            problems.append(f"{where}: error {sorted(seen - {'None'}) or 'none'}, expected {step.error}")
    if step.delay == "policy":
        bounds = policy_delay_bounds(hop, policies)
        if bounds is None or hop.delay_seconds is None:
            problems.append(f"{where}: no delay recorded on this hop")
        else:
            low, _high, text = bounds
            # Retry-After may lengthen a delay, never shorten it; rounding to the ms is tolerated.
            if hop.delay_seconds < low - 0.001:
                problems.append(f"{where}: delay {hop.delay_seconds:.3f} s is shorter than the policy allows ({text})")
    if previous is not None and previous.delay_seconds is not None and hop.stage is Stage.queued:
        # The re-queue after a delay: it must not come earlier than the delay chosen.
        if hop.delay_seconds is not None and hop.delay_seconds + WAIT_SLACK_SECONDS < previous.delay_seconds:
            problems.append(
                f"{where}: re-queued after {hop.delay_seconds:.3f} s, earlier than the {previous.delay_seconds:.3f} s chosen"
            )
    return problems


def model_split(steps: list[PathStep], forced_answers: int) -> int | None:
    """Index of the expected scoring step of the first answer the model writes itself.

    The first ``forced_answers`` answers are written by degrade faults; their scoring steps, and
    the regenerations they cause, are as certain as an injected 503. None when every answer of
    the path is forced (or it has none): then the whole path is certain.
    """
    scoring = [index for index, step in enumerate(steps) if step.stage is Stage.scoring]
    return scoring[forced_answers] if forced_answers < len(scoring) else None


def model_call_bounds(steps: list[PathStep], split: int, policies: Policies) -> tuple[int, int]:
    """(fewest, most) LLM calls once the model decides from ``split``: the calls up to its first
    answer, plus one for each regeneration the gate may still ask for."""
    calls = sum(1 for step in steps[:split] if step.stage is Stage.generating)
    first_attempt = sum(1 for step in steps[:split] if step.stage is Stage.regenerating)
    return calls, calls + max(0, policies.max_regenerations - first_attempt)


def judgements(hops: list[Hop], forced_answers: int = 0) -> list[Judgement]:
    """The gate's decisions along a path, one per answer scored, oldest first."""
    decided = []
    for hop in observed_path(hops):
        if hop.stage not in (Stage.validated, Stage.regenerating, Stage.low_quality):
            continue
        # A regenerating hop carries the attempt it starts; the answer it judged is the one before.
        attempt = hop.attempt - 1 if hop.stage is Stage.regenerating else hop.attempt
        decided.append(Judgement(attempt, hop.score, hop.stage.value, forced=attempt < forced_answers))
    return decided


def compare(steps: list[PathStep], hops: list[Hop], policies: Policies, model_from: int | None = None) -> PathCheck:
    """Do the observed hops follow the expected steps exactly, with each step's checks holding?

    With ``model_from`` (``model_split``: a real model answers), only the steps before it are
    expected exactly; from there the hops must follow the gate (``gate_problems``).
    """
    path = observed_path(hops)
    exact = steps if model_from is None else steps[:model_from]
    check = PathCheck(
        expected=[s.label for s in exact], observed=[hop_label(h) for h in path], model_decided_from=model_from
    )
    for index, (step, hop) in enumerate(zip(exact, path)):
        if step.stage is not hop.stage or (step.topic is not None and step.topic != hop.topic):
            check.problems.append(
                f"step {index + 1}: expected {step.label}, observed {hop_label(hop)}"
            )
            return check  # past a divergence, step-by-step checks say nothing useful
        check.problems.extend(_check_step(step, hop, policies, path[index - 1] if index else None))
    if len(path) < len(exact):
        missing = ", ".join(s.label for s in exact[len(path):])
        check.problems.append(f"missing {len(exact) - len(path)} hop(s): {missing}")
    elif model_from is None and len(path) > len(exact):
        extra = ", ".join(hop_label(h) for h in path[len(exact):])
        check.problems.append(f"{len(path) - len(exact)} unexpected hop(s) after the expected path: {extra}")
    elif model_from is not None:
        first_attempt = sum(1 for step in exact if step.stage is Stage.regenerating)
        check.problems.extend(gate_problems(path[model_from:], policies, first_attempt, offset=model_from))
    return check


_ANSWER = (Stage.scoring, "llm-responses-success")
_DECISIONS = {
    (Stage.validated, "validated-responses"),
    (Stage.regenerating, "questions-pending"),
    (Stage.low_quality, "low-quality-responses"),
}
_NEXT = {
    Stage.scoring: (
        "validated @ validated-responses, regenerating @ questions-pending or low_quality @ low-quality-responses"
    ),
    Stage.regenerating: "generating @ questions-pending",
    Stage.generating: "scoring @ llm-responses-success",
}


def gate_problems(hops: list[Hop], policies: Policies, first_attempt: int, offset: int = 0) -> list[str]:
    """What is wrong with ``hops`` as the gate's judging of answers, from the scoring hop of one on.

    The legal sequences: scoring -> validated (score above the threshold) | regenerating (at or
    below, attempt + 1, while regenerations are left) -> generating -> scoring ... | low_quality
    (at or below, at the last attempt). The last hop is validated or low_quality. ``offset``:
    the index of the first hop in the whole path, for the messages.
    """
    if not hops:
        return ["missing the model's answer: scoring @ llm-responses-success and the gate's decision"]
    threshold, last = policies.quality_threshold, policies.max_regenerations
    problems: list[str] = []
    attempt = first_attempt
    wanted: set[tuple[Stage, str | None]] = {_ANSWER}
    previous: Stage | None = None
    for index, hop in enumerate(hops, start=offset + 1):
        where = f"step {index} ({hop_label(hop)})"
        if (hop.stage, hop.topic) not in wanted:
            after = f"after {previous.value}" if previous is not None else "first"
            expected = _NEXT[previous] if previous is not None else "scoring @ llm-responses-success"
            problems.append(f"{where}: not what the gate does {after}: expected {expected}")
            return problems
        if hop.stage is Stage.regenerating:
            attempt += 1
        if hop.attempt != attempt:
            problems.append(f"{where}: attempt {hop.attempt}, expected {attempt}")
        if (hop.stage, hop.topic) in _DECISIONS:
            problems.extend(_decision_problems(hop, where, threshold, last, attempt))
        previous = hop.stage
        if hop.stage in (Stage.validated, Stage.low_quality):
            if index < offset + len(hops):
                extra = ", ".join(hop_label(h) for h in hops[index - offset:])
                count = len(hops) - (index - offset)
                problems.append(f"{count} unexpected hop(s) after the terminal {hop.stage.value}: {extra}")
            return problems
        wanted = (
            _DECISIONS if hop.stage is Stage.scoring
            else {(Stage.generating, "questions-pending")} if hop.stage is Stage.regenerating
            else {_ANSWER}
        )
    problems.append(f"no terminal state yet: after {hops[-1].stage.value} the gate goes on with {_NEXT[hops[-1].stage]}")
    return problems


def _decision_problems(hop: Hop, where: str, threshold: float, last: int, attempt: int) -> list[str]:
    if hop.score is None:
        return [f"{where}: no score recorded on the gate's decision"]
    above = hop.score > threshold
    if hop.stage is Stage.validated and not above:
        return [f"{where}: validated with score {hop.score:.3f}, not above the threshold {threshold:g}"]
    if hop.stage is not Stage.validated and above:
        return [f"{where}: score {hop.score:.3f} is above the threshold {threshold:g}, yet not validated"]
    if hop.stage is Stage.regenerating and attempt > last:
        return [f"{where}: regeneration {attempt}, past the limit of {last}"]
    if hop.stage is Stage.low_quality and attempt < last:
        return [f"{where}: low quality after {attempt} regeneration(s), with {last - attempt} left"]
    return []


def first_divergence(steps: list[PathStep], hops: list[Hop]) -> int | None:
    """Index of the first observed hop that cannot be a prefix of the expected path, if any.

    Lets the runner stop following a question early when it has already left the expected path.
    """
    for index, hop in enumerate(observed_path(hops)):
        if index >= len(steps):
            return index
        step = steps[index]
        if step.stage is not hop.stage or (step.topic is not None and step.topic != hop.topic):
            return index
    return None
