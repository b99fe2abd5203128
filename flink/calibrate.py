"""flink/calibration.json: which layer and score the scorer uses, and what the local model scores.

Text calibration (the default): which layer, and which score, the quality threshold judges.

Data: the knowledge base of ``demo_scenarios/`` (services/common/knowledge_base.py). For each
question *i*:

- good answers: its paraphrases, scored against its reference;
- bad answers: its degraded (off-topic) answers against its reference, and the reference and
  paraphrases of every other question *j != i* against reference *i*: an answer to another
  question, often on the same subject, is the harder negative.

The baseline *b* of a layer is the mean raw F1 of those cross-question pairs: bert_score builds
its baselines from random pairs of unrelated sentences, here they come from the data itself.
For every layer (1..6) and both scores (raw F1, and ``(F - b) / (1 - b)``), the margin is
``min(lowest good - 0.75, 0.75 - highest bad)``: 0.75 is where close paraphrases pass
(``SELECTION_THRESHOLD``), not the gate's default threshold, which is chosen on a real model's
answers (below). The configuration with the largest margin is written, with the figures of
every configuration for the record, and the chosen one's figures at the gate's threshold.

Real model (``--model-url``): the model server is asked every knowledge-base question with the
pipeline's own request (``LocalBackend``, ``Sampling``, ``build_prompt``), ``--samples`` first
answers each (attempt 0, one seed per sample), then per answer one regeneration of each style:
*fresh* (attempt 1's temperature and seed, the first attempt's prompt) and *feedback* (the
prompt also carries the previous answer and its score); answers still at or below the threshold
after the fresh one are regenerated fresh up to ``max_regenerations`` like the pipeline would.
The figures go to the ``real_model`` section of the file; the rest of the file is kept.

    python -m flink.calibrate            # rewrite the text calibration, print the table
    python -m flink.calibrate --check    # recompute it; exit 1 if the file no longer matches
    python -m flink.calibrate --model-url http://127.0.0.1:11436 --samples 3   # real model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import httpx

from flink.scoring import CALIBRATION_FILE, Calibration, Scorer, model_name
from services.common.knowledge_base import DEFAULT_PATH, KnowledgeBase, KnowledgeEntry, load_knowledge_base
from services.common.prompts import build_prompt
from services.common.settings import Policies, QactlSettings, get_settings
from services.llm_consumer.backends import LLMCallError, LocalBackend, Sampling

Pairs = list[tuple[str, str]]
Triple = tuple[list[float], list[float], list[float]]  # good, degraded, other-question scores
LAYERS = range(1, 7)
KINDS = ("raw", "rescaled")
# The layer and score are chosen by their margin around this: close paraphrases of the
# reference pass it, answers of other questions do not. The gate's threshold is a policy.
SELECTION_THRESHOLD = 0.75
# The real model's answers are counted above each of these.
REAL_MODEL_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75)


@dataclass(frozen=True)
class Sets:
    paraphrase: Pairs
    degraded: Pairs
    other_question: Pairs


def pair_sets(base: KnowledgeBase) -> Sets:
    entries = base.entries
    # Not the degraded answers: they are off-topic for their own question but may well be on the
    # topic of another one (the knowledge base reuses its subjects).
    answers_of = [[e.reference_answer, *e.paraphrases] for e in entries]
    return Sets(
        paraphrase=[(p, e.reference_answer) for e in entries for p in e.paraphrases],
        degraded=[(d, e.reference_answer) for e in entries for d in e.degraded],
        other_question=[
            (answer, entry.reference_answer)
            for i, entry in enumerate(entries)
            for j, answers in enumerate(answers_of)
            if j != i
            for answer in answers
        ],
    )


def _f1(scorer: Scorer, pairs: Pairs) -> list[float]:
    return scorer.f1([c for c, _ in pairs], [r for _, r in pairs])


def _stats(good: list[float], degraded: list[float], other: list[float], threshold: float) -> dict:
    bad = degraded + other
    return {
        "paraphrase_min": round(min(good), 4),
        "paraphrase_median": round(statistics.median(good), 4),
        "degraded_max": round(max(degraded), 4),
        "degraded_median": round(statistics.median(degraded), 4),
        "other_question_max": round(max(other), 4),
        "other_question_median": round(statistics.median(other), 4),
        "good_at_or_below_threshold": sum(s <= threshold for s in good),
        "degraded_above_threshold": sum(s > threshold for s in degraded),
        "other_question_above_threshold": sum(s > threshold for s in other),
        "margin": round(min(min(good) - threshold, threshold - max(bad)), 4),
    }


def measure(base: KnowledgeBase, threshold: float, layers=LAYERS) -> tuple[list[dict], dict[tuple[int, str], Triple]]:
    """Raw and rescaled separation figures of each layer, and the scores they come from."""
    sets = pair_sets(base)
    rows = []
    scores: dict[tuple[int, str], Triple] = {}
    for layer in layers:
        scorer = Scorer(calibration=Calibration.raw(layer))
        good, degraded, other = (_f1(scorer, s) for s in (sets.paraphrase, sets.degraded, sets.other_question))
        baseline = statistics.fmean(other)
        rescaled = Calibration(model_name(), layer, True, baseline)
        scores[layer, "raw"] = (good, degraded, other)
        scores[layer, "rescaled"] = tuple([rescaled.apply(f) for f in xs] for xs in (good, degraded, other))  # type: ignore[assignment]
        rows.append(
            {
                "num_layers": layer,
                "f1_baseline": round(baseline, 6),
                **{kind: _stats(*scores[layer, kind], threshold) for kind in KINDS},
            }
        )
    return rows, scores


def decide(
    rows: list[dict],
    scores: dict[tuple[int, str], Triple],
    base: KnowledgeBase,
    path: Path,
    threshold: float,
    selection_threshold: float = SELECTION_THRESHOLD,
) -> dict:
    """The configuration with the largest margin around ``selection_threshold`` (the rows'),
    with its figures at the gate's ``threshold`` too."""
    layer, score = max(
        ((row, kind) for row in rows for kind in KINDS),
        key=lambda choice: choice[0][choice[1]]["margin"],
    )
    sets = pair_sets(base)
    return {
        "model": model_name(),
        "num_layers": layer["num_layers"],
        "rescale": score == "rescaled",
        "f1_baseline": layer["f1_baseline"],
        "threshold": threshold,
        "selection_threshold": selection_threshold,
        "chosen": layer[score],
        "at_threshold": _stats(*scores[layer["num_layers"], score], threshold),
        "method": (
            "flink/calibrate.py: per layer, raw F1 and (F-b)/(1-b) with b = mean F1 of "
            "cross-question pairs; good = paraphrases vs their reference, bad = degraded answers "
            "vs their reference, and the reference and paraphrases of every other question vs the "
            "reference; the configuration with the largest margin around selection_threshold is "
            "chosen ('chosen'); 'at_threshold': its figures at the gate's default threshold "
            "(Policies.quality_threshold)"
        ),
        "knowledge_base": f"{_display(path)} ({len(base)} questions)",
        "pairs": {name: len(getattr(sets, name)) for name in ("paraphrase", "degraded", "other_question")},
        "layers": rows,
    }


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


def print_table(rows: list[dict], threshold: float) -> None:
    print(f"threshold {threshold}; good = paraphrases, bad = degraded / answers of other questions")
    print("layer score     base   good min  good med  degr max  other max  misjudged (good/degr/other)  margin")
    for row in rows:
        for kind in KINDS:
            s = row[kind]
            print(
                f"{row['num_layers']:>5} {kind:<9} {row['f1_baseline']:.3f}  {s['paraphrase_min']:>8.3f}"
                f"  {s['paraphrase_median']:>8.3f}  {s['degraded_max']:>8.3f}  {s['other_question_max']:>9.3f}"
                f"  {s['good_at_or_below_threshold']:>9} /{s['degraded_above_threshold']:>4} /{s['other_question_above_threshold']:>5}"
                f"         {s['margin']:>6.3f}"
            )


def up_to_date(current: dict, result: dict) -> bool:
    """The file's text calibration is the recomputed one (its ``real_model`` section is measured,
    not recomputed, and not compared)."""
    return (
        current.get("num_layers") == result["num_layers"]
        and current.get("rescale") == result["rescale"]
        and abs(current.get("f1_baseline", float("nan")) - result["f1_baseline"]) <= 1e-4
        and current.get("threshold") == result["threshold"]
    )


# --- the real model's answers: statistics (pure) ---


def _key(threshold: float) -> str:
    return f"{threshold:g}"


def above(scores: Sequence[float], thresholds: Sequence[float] = REAL_MODEL_THRESHOLDS) -> dict[str, int]:
    """How many scores validate (are above) each threshold."""
    return {_key(t): sum(s > t for s in scores) for t in thresholds}


def distribution(scores: Sequence[float], thresholds: Sequence[float] = REAL_MODEL_THRESHOLDS) -> dict:
    """n, quantiles (inclusive method, as numpy's default), mean, and counts above each threshold."""
    if not scores:
        raise ValueError("no scores")
    cuts = statistics.quantiles(scores, n=20, method="inclusive") if len(scores) > 1 else [scores[0]] * 19
    return {
        "n": len(scores),
        "min": round(min(scores), 4),
        "p25": round(cuts[4], 4),
        "median": round(statistics.median(scores), 4),
        "p75": round(cuts[14], 4),
        "p90": round(cuts[17], 4),
        "max": round(max(scores), 4),
        "mean": round(statistics.fmean(scores), 4),
        "above": above(scores, thresholds),
    }


def regeneration_figures(
    first: Sequence[float], again: Sequence[float], thresholds: Sequence[float] = REAL_MODEL_THRESHOLDS
) -> dict:
    """One regeneration of every first answer: its scores, the gain over the first, and how many
    would validate with the better of the two (what one regeneration can add at each threshold)."""
    if len(first) != len(again) or not first:
        raise ValueError(f"{len(first)} first scores for {len(again)} regenerations")
    gains = [b - a for a, b in zip(first, again)]
    return {
        "median": round(statistics.median(again), 4),
        "mean_gain": round(statistics.fmean(gains), 4),
        "improved": sum(g > 0 for g in gains),
        "worse": sum(g < 0 for g in gains),
        "above": above(again, thresholds),
        "best_of_two_above": above([max(a, b) for a, b in zip(first, again)], thresholds),
    }


def outcomes(chains: Sequence[Sequence[float]], threshold: float, max_regenerations: int) -> dict:
    """What the gate makes of each question's scores, attempt by attempt (a chain stops at the
    first score above ``threshold``, or after ``max_regenerations`` regenerations)."""
    validated_at = [0] * (max_regenerations + 1)
    low_quality = 0
    regenerated_first, regenerated_final = [], []
    for chain in chains:
        if not chain or len(chain) > max_regenerations + 1:
            raise ValueError(f"a chain of {len(chain)} scores with {max_regenerations} regenerations")
        if chain[-1] > threshold:
            validated_at[len(chain) - 1] += 1
        elif len(chain) == max_regenerations + 1:
            low_quality += 1
        else:
            raise ValueError(f"chain {list(chain)} ends at or below {threshold} before its last attempt")
        if len(chain) > 1:
            regenerated_first.append(chain[0])
            regenerated_final.append(chain[-1])
    n = len(chains)
    return {
        "n": n,
        "validated_first": validated_at[0],
        "validated_first_share": round(validated_at[0] / n, 3) if n else None,
        "validated_at_regeneration": validated_at[1:],
        "low_quality": low_quality,
        "regenerated": len(regenerated_first),
        # First vs final score of the regenerated ones, as `qactl metrics` shows them.
        "regenerated_mean_first": round(statistics.fmean(regenerated_first), 4) if regenerated_first else None,
        "regenerated_mean_final": round(statistics.fmean(regenerated_final), 4) if regenerated_final else None,
    }


# --- the real model's answers: asking it ---


@dataclass(frozen=True)
class Draw:
    """Sample ``sample`` (0, 1, ...) of one knowledge-base question."""

    entry: KnowledgeEntry
    sample: int


def server_props(model_url: str, timeout: float = 5.0) -> dict:
    """What llama.cpp's ``GET /props`` says of the model and the server's sampler ({} if nothing)."""
    try:
        props = httpx.get(f"{model_url.rstrip('/')}/props", timeout=timeout).json()
    except (httpx.HTTPError, ValueError):
        return {}
    if not isinstance(props, dict):
        return {}
    params = (props.get("default_generation_settings") or {}).get("params") or {}
    model_path = props.get("model_path")
    return {
        "model": props.get("model_alias"),
        "model_file": Path(model_path).name if model_path else None,
        "model_type": props.get("model_ftype"),
        "build": props.get("build_info"),
        "slots": props.get("total_slots"),
        "sampler": {k: round(params[k], 4) for k in ("top_k", "top_p", "min_p") if isinstance(params.get(k), (int, float))},
    }


class ModelAsker:
    """The pipeline's request (``LocalBackend``), one backend per sample so each draws its own seeds."""

    def __init__(self, model_url: str, model: str, sampling: Sampling, samples: int, timeout: float, concurrency: int) -> None:
        base = f"{model_url.rstrip('/')}/v1"
        self.backends = [LocalBackend(base, model, timeout, sampling=replace(sampling, sample=k)) for k in range(samples)]
        self.concurrency = concurrency
        self.calls = 0
        self.seconds = 0.0

    async def ask(self, calls: Sequence[tuple[Draw, str, int]]) -> list[str]:
        """The answers to ``(draw, prompt, attempt)`` calls, ``concurrency`` at a time."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(draw: Draw, prompt: str, attempt: int) -> str:
            async with gate:
                return (await self.backends[draw.sample].generate(prompt, attempt)).answer

        started = time.perf_counter()
        answers = await asyncio.gather(*(one(*call) for call in calls))
        self.seconds += time.perf_counter() - started
        self.calls += len(calls)
        return list(answers)

    async def aclose(self) -> None:
        for backend in self.backends:
            await backend.aclose()


async def _ask_real_model(
    asker: ModelAsker, scorer: Scorer, draws: list[Draw], threshold: float, max_regenerations: int, answers_log: list[dict]
) -> dict:
    try:
        return await _ask_and_score(asker, scorer, draws, threshold, max_regenerations, answers_log)
    finally:
        await asker.aclose()


async def _ask_and_score(
    asker: ModelAsker, scorer: Scorer, draws: list[Draw], threshold: float, max_regenerations: int, answers_log: list[dict]
) -> dict:
    def score(answers: list[str], of: list[Draw]) -> list[float]:
        return scorer.score(answers, [d.entry.reference_answer for d in of])

    first_prompts = [build_prompt(d.entry.question) for d in draws]
    first = await asker.ask([(d, p, 0) for d, p in zip(draws, first_prompts)])
    first_scores = score(first, draws)
    fresh = await asker.ask([(d, p, 1) for d, p in zip(draws, first_prompts)])
    fresh_scores = score(fresh, draws)
    feedback_prompts = [build_prompt(d.entry.question, a, s) for d, a, s in zip(draws, first, first_scores)]
    feedback = await asker.ask([(d, p, 1) for d, p in zip(draws, feedback_prompts)])
    feedback_scores = score(feedback, draws)

    # The gate's path with fresh regenerations: stop at the first score above the threshold.
    chains = [[a] if a > threshold else [a, b] for a, b in zip(first_scores, fresh_scores)]
    later: dict[int, list[tuple[str, float]]] = {i: [] for i in range(len(draws))}
    for attempt in range(2, max_regenerations + 1):
        pending = [i for i, chain in enumerate(chains) if len(chain) == attempt and chain[-1] <= threshold]
        if not pending:
            break
        answers = await asker.ask([(draws[i], first_prompts[i], attempt) for i in pending])
        for i, answer, s in zip(pending, answers, score(answers, [draws[i] for i in pending])):
            chains[i].append(s)
            later[i].append((answer, s))

    for i, d in enumerate(draws):
        answers_log.append(
            {
                "question": d.entry.question,
                "sample": d.sample,
                "first": [first[i], round(first_scores[i], 4)],
                "fresh": [fresh[i], round(fresh_scores[i], 4)],
                "feedback": [feedback[i], round(feedback_scores[i], 4)],
                "later_fresh": [[a, round(s, 4)] for a, s in later[i]],
            }
        )
    return {
        "first": distribution(first_scores),
        "regeneration": {
            "fresh": {
                "prompt": "the first attempt's: build_prompt(question)",
                **regeneration_figures(first_scores, fresh_scores),
            },
            "feedback": {
                "prompt": "build_prompt(question, previous_answer, previous_score)",
                **regeneration_figures(first_scores, feedback_scores),
            },
        },
        "outcomes": {
            "regeneration": "fresh",
            "max_regenerations": max_regenerations,
            **outcomes(chains, threshold, max_regenerations),
        },
    }


def measure_real_model(
    model_url: str,
    base: KnowledgeBase,
    settings: QactlSettings,
    samples: int,
    questions: int | None = None,
    concurrency: int | None = None,
    answers_log: list[dict] | None = None,
    timeout: float = 120.0,
) -> dict:
    """The ``real_model`` section: the local model's answers to the knowledge base, scored."""
    threshold = settings.policies.quality_threshold
    max_regenerations = settings.policies.max_regenerations
    entries = base.entries[:questions] if questions else base.entries
    draws = [Draw(entry, k) for entry in entries for k in range(samples)]
    props = server_props(model_url)
    sampling = Sampling.from_settings(settings.llm)
    model = props.get("model") or settings.llm_server.alias
    concurrency = concurrency or props.get("slots") or settings.llm_server.slots
    scorer = Scorer()
    scorer.score(["warm up"], ["the scorer's model"])  # loaded before the clock starts
    # Not the pipeline's timeout: on a busy machine an answer may take longer, and the figures
    # are about what it says, not how fast.
    asker = ModelAsker(model_url, model, sampling, samples, timeout, concurrency)
    load_before = os.getloadavg()
    started = time.perf_counter()
    log = answers_log if answers_log is not None else []
    figures = asyncio.run(_ask_real_model(asker, scorer, draws, threshold, max_regenerations, log))
    return {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "server": {k: v for k, v in props.items() if v not in (None, {})},
        "model": model,
        "request": {
            "call": "services.llm_consumer.backends.LocalBackend: POST /v1/chat/completions, "
            "messages [system prompts.SYSTEM, user build_prompt(...)]",
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "temperature_step_per_regeneration": sampling.temperature_step,
            "seed": "Sampling.seed_for(prompt, attempt, sample)",
            "concurrency": concurrency,
        },
        "knowledge_base_questions": len(entries),
        "samples": samples,
        "threshold": threshold,
        **figures,
        "timing": {
            "calls": asker.calls,
            "seconds_in_calls": round(asker.seconds, 1),
            "answers_per_second": round(asker.calls / asker.seconds, 2) if asker.seconds else None,
            "total_seconds": round(time.perf_counter() - started, 1),
            "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
    }


def print_real_model(section: dict) -> None:
    first, threshold = section["first"], section["threshold"]
    print(
        f"{section['model']}: {first['n']} first answers ({section['knowledge_base_questions']} questions x "
        f"{section['samples']}), max_tokens {section['request']['max_tokens']}, temperature {section['request']['temperature']}"
    )
    print(
        f"  first: min {first['min']:.3f}  p25 {first['p25']:.3f}  median {first['median']:.3f}  p75 {first['p75']:.3f}"
        f"  p90 {first['p90']:.3f}  max {first['max']:.3f}"
    )
    def row(label: str, counts: dict) -> None:
        print(f"  {label:<30}" + "".join(f"{n:>6}" for n in counts.values()))

    row("answers above", {t: t for t in first["above"]})
    row("first", first["above"])
    for style, figures in section["regeneration"].items():
        row(f"{style} regeneration", figures["above"])
        row(f"better of first and {style}", figures["best_of_two_above"])
    for style, figures in section["regeneration"].items():
        print(
            f"  {style} regeneration: median {figures['median']:.3f}, mean gain {figures['mean_gain']:+.3f}, "
            f"improved {figures['improved']}/{first['n']}, worse {figures['worse']}"
        )
    o = section["outcomes"]
    print(
        f"  at threshold {threshold}, fresh regenerations (up to {o['max_regenerations']}): validated first "
        f"{o['validated_first']}/{o['n']} ({o['validated_first_share']:.0%}), at regeneration 1..{o['max_regenerations']} "
        f"{o['validated_at_regeneration']}, low-quality {o['low_quality']}"
    )
    t = section["timing"]
    print(
        f"  {t['calls']} calls in {t['seconds_in_calls']} s ({t['answers_per_second']} answers/s, "
        f"concurrency {section['request']['concurrency']}, load average {t['load_average_1min'][0]} -> {t['load_average_1min'][1]})"
    )


def write_section(path: Path, name: str, section: dict) -> None:
    """Set one top-level section of the JSON file at ``path``, keeping the others."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = section
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Calibrate the quality score on the knowledge base.")
    parser.add_argument("--knowledge-base", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--output", type=Path, default=CALIBRATION_FILE)
    parser.add_argument("--check", action="store_true", help="compare with --output instead of writing it")
    real = parser.add_argument_group("real model")
    real.add_argument("--model-url", help="measure the model server at this URL (llama-server, e.g. http://127.0.0.1:11436)")
    real.add_argument("--samples", type=int, default=3, help="first answers per question (default 3)")
    real.add_argument("--questions", type=int, help="only the first N questions of the knowledge base")
    real.add_argument("--concurrency", type=int, help="requests at once (default: the server's slots)")
    real.add_argument("--answers", type=Path, help="also write every answer and its score to this JSON file")
    real.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one answer (default 120)")
    args = parser.parse_args(argv)

    base = load_knowledge_base(args.knowledge_base)
    if args.model_url:
        settings = get_settings()  # the pipeline's settings: qactl.toml and QACTL_* apply
        if args.check:
            parser.error("--check verifies the text calibration; the real model's figures are measured, not checked")
        answers: list[dict] = []
        try:
            section = measure_real_model(
                args.model_url, base, settings, args.samples, args.questions, args.concurrency, answers, args.timeout
            )
        except LLMCallError as exc:
            print(f"the model server at {args.model_url} failed: {exc}", file=sys.stderr)
            return 1
        print_real_model(section)
        write_section(args.output, "real_model", section)
        print(f"wrote the real_model section of {args.output}")
        if args.answers:
            args.answers.write_text(json.dumps(answers, indent=1, ensure_ascii=False) + "\n")
            print(f"wrote {len(answers)} answers to {args.answers}")
        return 0

    threshold = Policies().quality_threshold  # the default, whatever a qactl.toml says
    rows, scores = measure(base, SELECTION_THRESHOLD)
    print_table(rows, SELECTION_THRESHOLD)
    result = decide(rows, scores, base, args.knowledge_base, threshold)
    print(
        f"chosen: layer {result['num_layers']}, {'rescaled' if result['rescale'] else 'raw'} F1"
        f" (baseline {result['f1_baseline']:.4f}), margin {result['chosen']['margin']:.3f}"
        f" around {SELECTION_THRESHOLD}"
    )
    at = result["at_threshold"]
    print(
        f"at the gate's threshold {threshold}: paraphrases at or below {at['good_at_or_below_threshold']},"
        f" degraded above {at['degraded_above_threshold']}, other-question answers above"
        f" {at['other_question_above_threshold']} of {result['pairs']['other_question']} (max {at['other_question_max']})"
    )
    current = json.loads(args.output.read_text()) if args.output.is_file() else {}
    if args.check:
        same = up_to_date(current, result)
        print(f"{args.output}: {'up to date' if same else 'OUT OF DATE: rerun without --check'}")
        return 0 if same else 1
    if "real_model" in current:  # measured on a model server, not recomputed here: kept
        result["real_model"] = current["real_model"]
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
