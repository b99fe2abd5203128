"""Observed hops against a case's expected path, and what each hop means under the policies.

Pure functions of hops, steps and policies (no I/O), shared by the demo runner, its narration
and the tests.
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


@dataclass
class PathCheck:
    expected: list[str]
    observed: list[str]
    problems: list[str] = field(default_factory=list)

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


def compare(steps: list[PathStep], hops: list[Hop], policies: Policies) -> PathCheck:
    """Do the observed hops follow the expected steps exactly, with each step's checks holding?"""
    path = observed_path(hops)
    check = PathCheck(expected=[s.label for s in steps], observed=[hop_label(h) for h in path])
    for index, (step, hop) in enumerate(zip(steps, path)):
        if step.stage is not hop.stage or (step.topic is not None and step.topic != hop.topic):
            check.problems.append(
                f"step {index + 1}: expected {step.label}, observed {hop_label(hop)}"
            )
            return check  # past a divergence, step-by-step checks say nothing useful
        check.problems.extend(_check_step(step, hop, policies, path[index - 1] if index else None))
    if len(path) < len(steps):
        missing = ", ".join(s.label for s in steps[len(path):])
        check.problems.append(f"missing {len(steps) - len(path)} hop(s): {missing}")
    elif len(path) > len(steps):
        extra = ", ".join(hop_label(h) for h in path[len(steps):])
        check.problems.append(f"{len(path) - len(steps)} unexpected hop(s) after the expected path: {extra}")
    return check


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
