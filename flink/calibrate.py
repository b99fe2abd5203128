"""Recompute flink/calibration.json: which layer, and which score, the quality threshold judges.

Data: the knowledge base of ``demo_scenarios/`` (services/common/knowledge_base.py). For each
question *i*:

- good answers: its paraphrases, scored against its reference;
- bad answers: its degraded (off-topic) answers against its reference, and the reference and
  paraphrases of every other question *j != i* against reference *i*: an answer to another
  question, often on the same subject, is the harder negative.

The baseline *b* of a layer is the mean raw F1 of those cross-question pairs: bert_score builds
its baselines from random pairs of unrelated sentences, here they come from the data itself.
For every layer (1..6) and both scores (raw F1, and ``(F - b) / (1 - b)``), the margin is
``min(lowest good - threshold, threshold - highest bad)``; the configuration with the largest
margin is written, with the figures of every configuration for the record.

    python -m flink.calibrate            # rewrite flink/calibration.json, print the table
    python -m flink.calibrate --check    # recompute; exit 1 if the file no longer matches
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from flink.scoring import CALIBRATION_FILE, Calibration, Scorer, model_name
from services.common.knowledge_base import DEFAULT_PATH, KnowledgeBase, load_knowledge_base
from services.common.settings import Policies

Pairs = list[tuple[str, str]]
LAYERS = range(1, 7)


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


def measure(base: KnowledgeBase, threshold: float, layers=LAYERS) -> list[dict]:
    """Raw and rescaled separation figures of each layer."""
    sets = pair_sets(base)
    rows = []
    for layer in layers:
        scorer = Scorer(calibration=Calibration.raw(layer))
        good, degraded, other = (_f1(scorer, s) for s in (sets.paraphrase, sets.degraded, sets.other_question))
        baseline = statistics.fmean(other)
        rescaled = Calibration(model_name(), layer, True, baseline)
        rows.append(
            {
                "num_layers": layer,
                "f1_baseline": round(baseline, 6),
                "raw": _stats(good, degraded, other, threshold),
                "rescaled": _stats(*([rescaled.apply(f) for f in xs] for xs in (good, degraded, other)), threshold),
            }
        )
    return rows


def decide(rows: list[dict], base: KnowledgeBase, path: Path, threshold: float) -> dict:
    layer, score = max(
        ((row, kind) for row in rows for kind in ("raw", "rescaled")),
        key=lambda choice: choice[0][choice[1]]["margin"],
    )
    sets = pair_sets(base)
    return {
        "model": model_name(),
        "num_layers": layer["num_layers"],
        "rescale": score == "rescaled",
        "f1_baseline": layer["f1_baseline"],
        "threshold": threshold,
        "chosen": layer[score],
        "method": (
            "flink/calibrate.py: per layer, raw F1 and (F-b)/(1-b) with b = mean F1 of "
            "cross-question pairs; good = paraphrases vs their reference, bad = degraded answers "
            "vs their reference, and the reference and paraphrases of every other question vs the "
            "reference; the "
            "configuration with the largest margin around the threshold is chosen"
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
        for kind in ("raw", "rescaled"):
            s = row[kind]
            print(
                f"{row['num_layers']:>5} {kind:<9} {row['f1_baseline']:.3f}  {s['paraphrase_min']:>8.3f}"
                f"  {s['paraphrase_median']:>8.3f}  {s['degraded_max']:>8.3f}  {s['other_question_max']:>9.3f}"
                f"  {s['good_at_or_below_threshold']:>9} /{s['degraded_above_threshold']:>4} /{s['other_question_above_threshold']:>5}"
                f"         {s['margin']:>6.3f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Calibrate the quality score on the knowledge base.")
    parser.add_argument("--knowledge-base", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--output", type=Path, default=CALIBRATION_FILE)
    parser.add_argument("--check", action="store_true", help="compare with --output instead of writing it")
    args = parser.parse_args(argv)

    threshold = Policies().quality_threshold
    base = load_knowledge_base(args.knowledge_base)
    rows = measure(base, threshold)
    print_table(rows, threshold)
    result = decide(rows, base, args.knowledge_base, threshold)
    print(
        f"chosen: layer {result['num_layers']}, {'rescaled' if result['rescale'] else 'raw'} F1"
        f" (baseline {result['f1_baseline']:.4f}), margin {result['chosen']['margin']:.3f}"
    )
    if args.check:
        current = json.loads(args.output.read_text())
        same = (
            current["num_layers"] == result["num_layers"]
            and current["rescale"] == result["rescale"]
            and abs(current["f1_baseline"] - result["f1_baseline"]) <= 1e-4
        )
        print(f"{args.output}: {'up to date' if same else 'OUT OF DATE: rerun without --check'}")
        return 0 if same else 1
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
