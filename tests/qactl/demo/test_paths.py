"""Observed hops against expected paths, and the policy explanations of the narration."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from qactl.demo.cases import PathStep, load_case
from qactl.demo.paths import compare, explain, first_divergence, observed_path
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
    assert too_high.problems == ["hop regenerating @ questions-pending: score 0.800 is above the threshold 0.75"]
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
    assert explain(Hop(stage=Stage.validated, score=0.9), Policies()) == "score 0.900 > threshold 0.75: validated"
    regen = explain(Hop(stage=Stage.regenerating, score=0.5, attempt=2), Policies())
    assert regen == "score 0.500 <= threshold 0.75: regenerate (attempt 2 of 3)"
    assert "no regeneration left" in (explain(Hop(stage=Stage.low_quality, score=0.5), Policies()) or "")
    assert explain(Hop(stage=Stage.generating), Policies()) is None
