"""Observed hops against expected paths, and the policy explanations of the narration."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from qactl.demo.cases import PathStep, load_case
from qactl.demo.paths import (
    PathCheck,
    compare,
    explain,
    first_divergence,
    gate_verdict,
    judgements,
    model_call_bounds,
    model_split,
    observed_path,
)
from services.common.schemas import ErrorInfo, ErrorKind, Hop, Stage
from services.common.settings import Policies

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEMO = Policies(delay_scale=0.05)


def hops(*specs: tuple) -> list[Hop]:
    """(stage, topic, extra fields) -> hops one second apart."""
    made = []
    for i, (stage, topic, *extra) in enumerate(specs):
        made.append(Hop(stage=stage, topic=topic, at=T0 + timedelta(seconds=i), **(extra[0] if extra else {})))
    return made


def steps(*labels: str) -> list[PathStep]:
    return [PathStep.model_validate(label) for label in labels]


NORMAL = (
    (Stage.queued, "questions-pending"),
    (Stage.generating, "questions-pending"),
    (Stage.scoring, "llm-responses-success"),
    (Stage.validated, "validated-responses", {"score": 0.91}),
)


def test_the_normal_case_path_matches_its_hops() -> None:
    case = load_case("normal")
    check = compare(case.asks[0].expect.path, hops(*NORMAL), DEMO)
    assert check.ok, check.problems
    assert check.observed == [
        "queued @ questions-pending", "generating @ questions-pending",
        "scoring @ llm-responses-success", "validated @ validated-responses",
    ]


def test_hops_arriving_out_of_order_or_twice_are_one_path() -> None:
    observed = hops(*NORMAL)
    shuffled = [observed[2], observed[0], observed[1], observed[1].model_copy(update={"at": observed[1].at + timedelta(milliseconds=1)}), observed[3]]
    assert [h.stage for h in observed_path(shuffled)] == [h.stage for h in observed]


def test_a_divergence_names_the_step() -> None:
    case = load_case("normal")
    wrong = hops(*NORMAL[:2], (Stage.retrying_overload, "llm-responses-error-overload"))
    check = compare(case.asks[0].expect.path, wrong, DEMO)
    assert not check.ok
    assert check.problems == [
        "step 3: expected scoring @ llm-responses-success, observed retrying-overload @ llm-responses-error-overload"
    ]
    assert first_divergence(case.asks[0].expect.path, wrong) == 2


def test_missing_and_extra_hops() -> None:
    expected = steps("queued @ questions-pending", "generating @ questions-pending")
    assert compare(expected, hops(NORMAL[0]), DEMO).problems == ["missing 1 hop(s): generating @ questions-pending"]
    extra = compare(expected, hops(*NORMAL[:3]), DEMO)
    assert extra.problems == ["1 unexpected hop(s) after the expected path: scoring @ llm-responses-success"]


def test_scores_are_checked_against_the_threshold() -> None:
    expected = [PathStep.model_validate({"hop": "regenerating @ questions-pending", "score": "below", "attempt": 1})]
    ok = compare(expected, hops((Stage.regenerating, "questions-pending", {"score": 0.4, "attempt": 1})), DEMO)
    assert ok.ok
    too_high = compare(expected, hops((Stage.regenerating, "questions-pending", {"score": 0.8, "attempt": 1})), DEMO)
    assert too_high.problems == ["hop regenerating @ questions-pending: score 0.800 is above the threshold 0.6"]
    wrong_attempt = compare(expected, hops((Stage.regenerating, "questions-pending", {"score": 0.4, "attempt": 2})), DEMO)
    assert "attempt 2, expected 1" in wrong_attempt.problems[0]


def overload_hops(chosen: float, waited: float, level: int = 1) -> list[Hop]:
    error = ErrorInfo(kind=ErrorKind.overload, status_code=503, message="busy")
    return hops(
        (Stage.retrying_overload, f"retry-overload-delay-{level}", {"error": error, "delay_seconds": chosen}),
        (Stage.queued, "questions-pending", {"delay_seconds": waited}),
    )


def test_a_delay_shorter_than_the_policy_is_caught() -> None:
    expected = [
        PathStep.model_validate({"hop": "retrying-overload @ retry-overload-delay-1", "delay": "policy", "error": "503"}),
        PathStep.model_validate("queued @ questions-pending"),
    ]
    # Level 1 under the demo profile: 2^1 x 0.05 = 0.1 s, +-10 %.
    assert compare(expected, overload_hops(0.095, 0.1), DEMO).ok
    short = compare(expected, overload_hops(0.05, 0.06), DEMO)
    assert short.problems and "shorter than the policy allows" in short.problems[0]
    early = compare(expected, overload_hops(0.1, 0.02), DEMO)
    assert early.problems and "earlier than the 0.100 s chosen" in early.problems[0]


def test_an_error_step_names_what_was_seen() -> None:
    expected = [PathStep.model_validate({"hop": "retrying-quota @ llm-responses-error-quota", "error": "402"})]
    seen = hops((Stage.retrying_quota, "llm-responses-error-quota", {"error": ErrorInfo(kind=ErrorKind.quota, status_code=429)}))
    assert "expected 402" in compare(expected, seen, DEMO).problems[0]


def test_explanations_say_which_policy_chose_a_delay() -> None:
    (delay_hop, requeue) = overload_hops(0.103, 0.11)
    text = explain(delay_hop, DEMO)
    assert text is not None
    assert "overload policy: 2^1 s x 0.05 (demo profile: shortened) = 0.1 s" in text and "chose 0.103 s" in text
    assert explain(requeue, DEMO) == "waited 0.110 s on the delay topic"
    quota = Hop(stage=Stage.retrying_quota, topic="retry-quota-delay", delay_seconds=60.0)
    assert explain(quota, Policies()) == "quota policy: fixed 60 s = 60 s -> chose 60.000 s"
    retry_after = Hop(
        stage=Stage.retrying_overload, topic="retry-overload-delay-0", delay_seconds=5.0,
        error=ErrorInfo(kind=ErrorKind.overload, status_code=429, retry_after_seconds=5.0),
    )
    assert "Retry-After 5 s is longer and wins" in (explain(retry_after, DEMO) or "")


def test_explanations_compare_scores_with_the_threshold() -> None:
    assert explain(Hop(stage=Stage.validated, score=0.9), Policies()) == "score 0.900 > threshold 0.6: validated"
    regen = explain(Hop(stage=Stage.regenerating, score=0.5, attempt=2), Policies())
    assert regen == "score 0.500 <= threshold 0.6: regenerate (attempt 2 of 3)"
    assert "no regeneration left" in (explain(Hop(stage=Stage.low_quality, score=0.5), Policies()) or "")
    assert explain(Hop(stage=Stage.generating), Policies()) is None


# --- a real model: the path is certain as far as the faults force it, then the gate decides ---

PENDING, SUCCESS = "questions-pending", "llm-responses-success"


def gate(*decisions: tuple[str, float], start: int = 0) -> list[tuple]:
    """Hops of answers from attempt ``start`` on: scoring, then each decision ("validated",
    "regenerating", "low_quality") with its score; a regeneration is followed by the next answer."""
    made: list[tuple] = []
    attempt = start
    for decision, score in decisions:
        made.append((Stage.scoring, SUCCESS, {"attempt": attempt}))
        if decision == "regenerating":
            attempt += 1
            made.append((Stage.regenerating, PENDING, {"score": score, "attempt": attempt}))
            made.append((Stage.generating, PENDING, {"attempt": attempt}))
        else:
            topic = "validated-responses" if decision == "validated" else "low-quality-responses"
            made.append((Stage(decision), topic, {"score": score, "attempt": attempt}))
    return made


FIRST_ANSWER = ((Stage.queued, PENDING), (Stage.generating, PENDING))


def real(case: str, *observed: tuple) -> PathCheck:
    ask = load_case(case).asks[0]
    split = model_split(ask.expect.path, ask.forced_answers)
    return compare(ask.expect.path, hops(*observed), DEMO, split)


def test_the_model_decides_from_its_first_answer() -> None:
    normal = load_case("normal").asks[0]
    assert model_split(normal.expect.path, normal.forced_answers) == 2  # queued, generating, then its answer
    regeneration = load_case("regeneration").asks[0]
    assert regeneration.forced_answers == 1
    assert model_split(regeneration.expect.path, 1) == 5  # the degraded answer and its regeneration are forced
    overload = load_case("overload").asks[0]
    assert model_split(overload.expect.path, 0) == 10  # both 503 retries are forced
    low_quality = load_case("low-quality").asks[0]
    assert model_split(low_quality.expect.path, low_quality.forced_answers) is None  # every answer forced
    assert model_split(load_case("exhausted").asks[0].expect.path, 0) is None  # no answer at all


def test_validated_at_the_first_try() -> None:
    check = real("normal", *FIRST_ANSWER, *gate(("validated", 0.81)))
    assert check.ok, check.problems
    assert check.expected == ["queued @ questions-pending", "generating @ questions-pending"]
    assert check.model_decided_from == 2
    assert check.observed[2:] == ["scoring @ llm-responses-success", "validated @ validated-responses"]


def test_validated_after_a_regeneration_of_its_own() -> None:
    check = real("normal", *FIRST_ANSWER, *gate(("regenerating", 0.52), ("validated", 0.78)))
    assert check.ok, check.problems


def test_low_quality_after_three_regenerations() -> None:
    answers = gate(("regenerating", 0.5), ("regenerating", 0.4), ("regenerating", 0.55), ("low_quality", 0.6))
    check = real("normal", *FIRST_ANSWER, *answers)
    assert check.ok, check.problems
    assert [j.decision for j in judgements(hops(*FIRST_ANSWER, *answers))] == [
        "regenerating", "regenerating", "regenerating", "low_quality"
    ]


def test_a_sequence_the_gate_cannot_produce_is_caught() -> None:
    below = real("normal", *FIRST_ANSWER, *gate(("validated", 0.5)))
    assert below.problems == [
        "step 4 (validated @ validated-responses): validated with score 0.500, not above the threshold 0.6"
    ]
    above = real("normal", *FIRST_ANSWER, *gate(("regenerating", 0.9), ("validated", 0.8)))
    assert above.problems == [
        "step 4 (regenerating @ questions-pending): score 0.900 is above the threshold 0.6, yet not validated"
    ]
    early = real("normal", *FIRST_ANSWER, *gate(("regenerating", 0.5), ("low_quality", 0.5)))
    assert early.problems == ["step 7 (low_quality @ low-quality-responses): low quality after 1 regeneration(s), with 2 left"]
    four = gate(*[("regenerating", 0.5)] * 4, ("low_quality", 0.5))
    assert "regeneration 4, past the limit of 3" in real("normal", *FIRST_ANSWER, *four).problems[0]
    skipped = real("normal", *FIRST_ANSWER, (Stage.scoring, SUCCESS), (Stage.generating, PENDING))
    assert skipped.problems == [
        "step 4 (generating @ questions-pending): not what the gate does after scoring: expected "
        "validated @ validated-responses, regenerating @ questions-pending or low_quality @ low-quality-responses"
    ]


def test_an_unfinished_or_overlong_gate_sequence_is_caught() -> None:
    unfinished = real("normal", *FIRST_ANSWER, *gate(("regenerating", 0.5)))
    assert unfinished.problems == [
        "no terminal state yet: after generating the gate goes on with scoring @ llm-responses-success"
    ]
    assert real("normal", *FIRST_ANSWER).problems == [
        "missing the model's answer: scoring @ llm-responses-success and the gate's decision"
    ]
    extra = real("normal", *FIRST_ANSWER, *gate(("validated", 0.8)), (Stage.queued, PENDING))
    assert extra.problems == [
        "1 unexpected hop(s) after the terminal validated: queued @ questions-pending"
    ]


FORCED_DEGRADE = (
    *FIRST_ANSWER,
    (Stage.scoring, SUCCESS),
    (Stage.regenerating, PENDING, {"score": 0.21, "attempt": 1}),
    (Stage.generating, PENDING, {"attempt": 1}),
)


def test_the_forced_degraded_answer_stays_checked() -> None:
    after = gate(("validated", 0.8), start=1)
    check = real("regeneration", *FORCED_DEGRADE, *after)
    assert check.ok, check.problems
    assert check.model_decided_from == 5 and len(check.expected) == 5
    assert [(j.attempt, j.score, j.forced) for j in judgements(hops(*FORCED_DEGRADE, *after), 1)] == [
        (0, 0.21, True), (1, 0.8, False)
    ]
    # The model's own answer may also end low: three regenerations in all, then low quality.
    low = gate(("regenerating", 0.5), ("regenerating", 0.5), ("low_quality", 0.4), start=1)
    assert real("regeneration", *FORCED_DEGRADE, *low).ok
    # The degraded answer must still score below the threshold: that part is the fault's.
    high = [*FORCED_DEGRADE[:3], (Stage.regenerating, PENDING, {"score": 0.9, "attempt": 1}), FORCED_DEGRADE[4]]
    assert "score 0.900 is above the threshold 0.6" in real("regeneration", *high, *after).problems[0]
    # The model's answer is the regeneration's: attempt 1, not a fresh attempt 0.
    assert "attempt 0, expected 1" in real("regeneration", *FORCED_DEGRADE, *gate(("validated", 0.8))).problems[0]


def test_the_forced_retries_before_the_model_stay_checked() -> None:
    ask = load_case("overload").asks[0]
    wrong = hops(*FIRST_ANSWER, *gate(("validated", 0.8)))  # no 503 at all
    check = compare(ask.expect.path, wrong, DEMO, model_split(ask.expect.path, 0))
    assert check.problems == [
        "step 3: expected retrying-overload @ llm-responses-error-overload, observed scoring @ llm-responses-success"
    ]


def test_the_calls_a_model_may_make() -> None:
    for case, bounds in (("normal", (1, 4)), ("overload", (3, 6)), ("regeneration", (2, 4))):
        ask = load_case(case).asks[0]
        assert model_call_bounds(ask.expect.path, model_split(ask.expect.path, ask.forced_answers), Policies()) == bounds


def test_gate_verdicts() -> None:
    assert gate_verdict(Hop(stage=Stage.validated, score=0.64), Policies(quality_threshold=0.6)) == "score 0.640 > 0.6 -> validated"
    assert gate_verdict(Hop(stage=Stage.regenerating, score=0.5, attempt=1), Policies()) == (
        "score 0.500 <= 0.6 -> regenerate (attempt 1 of 3)"
    )
    assert gate_verdict(Hop(stage=Stage.low_quality, score=0.5, attempt=3), Policies()) == (
        "score 0.500 <= 0.6, no regeneration left -> low quality"
    )
