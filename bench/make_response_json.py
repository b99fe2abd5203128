"""Write a realistic ``response.json`` of an earlier run, for ``qactl migrate`` and its benchmark.

    python bench/make_response_json.py [OUT] [--count 10000] [--jsonl] [--seed 7]

Distinct questions built from topics and templates, answers of a few sentences, BERTScore-like
scores (most above the 0.75 threshold, a tail below), regeneration counts, LLM latencies in the
original plan's 800-5000 ms range, timestamps over the last 30 days, and a few optional fields
left out, as an export of the earlier run would have them.
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

SUBJECTS = (
    "Apache Kafka", "a Kafka partition", "consumer lag", "Apache Flink", "a Flink checkpoint", "a watermark",
    "PostgreSQL", "a B-tree index", "MVCC", "Redis", "a cache eviction policy", "the CAP theorem",
    "eventual consistency", "the Raft algorithm", "a vector clock", "idempotence", "exponential backoff",
    "a dead letter queue", "a circuit breaker", "rate limiting", "a load balancer", "TLS", "DNS",
    "HTTP/2", "gRPC", "a REST API", "OAuth 2", "a JSON Web Token", "a hash function", "a Bloom filter",
    "a skip list", "a red-black tree", "garbage collection", "a Python generator", "asyncio",
    "the GIL", "a process", "a thread", "a mutex", "a semaphore", "virtual memory", "a page fault",
    "photosynthesis", "DNA replication", "plate tectonics", "the water cycle", "inflation",
    "compound interest", "the speed of light", "a black hole", "entropy", "a transformer model",
    "BERTScore", "tokenization", "gradient descent", "overfitting", "cross-validation",
)
TEMPLATES = (
    "What is {s}?", "How does {s} work?", "Why does {s} matter?", "When should one use {s}?",
    "What are the drawbacks of {s}?", "How would you explain {s} to a new engineer?",
    "What problem does {s} solve?", "How is {s} usually implemented?",
)
SENTENCES = (
    "{S} is a well-established concept whose purpose is to make a system easier to reason about.",
    "In practice, {s} trades some simplicity for reliability and predictable behaviour under load.",
    "The key idea behind {s} is to separate what must be consistent from what can be approximate.",
    "Engineers rely on {s} when failures are expected and must not lose data.",
    "Its main limitation is the extra latency and the operational cost it adds.",
    "Most production systems combine {s} with monitoring so that problems are seen early.",
)
MODELS = ("llama3.2:3b", "mistral:7b", "qwen2.5:7b")


def record(rng: random.Random, index: int, now: datetime) -> dict:
    subject = SUBJECTS[index % len(SUBJECTS)]
    template = TEMPLATES[(index // len(SUBJECTS)) % len(TEMPLATES)]
    # Distinct questions: the n-th pass over subjects x templates gets a context suffix.
    round_ = index // (len(SUBJECTS) * len(TEMPLATES))
    question = template.format(s=subject) + (f" (context {round_})" if round_ else "")
    fill = {"s": subject, "S": subject[:1].upper() + subject[1:]}
    answer = " ".join(s.format(**fill) for s in rng.sample(SENTENCES, rng.randint(2, 4)))
    reference = " ".join(s.format(**fill) for s in SENTENCES[:2])
    regenerations = rng.choices((0, 1, 2, 3), weights=(78, 14, 5, 3))[0]
    score = round(min(0.99, max(0.3, rng.gauss(0.84 - 0.03 * regenerations, 0.07))), 4)
    completed = now - timedelta(seconds=rng.uniform(0, 30 * 24 * 3600))
    latency = round(rng.uniform(800, 5000), 1)
    item: dict = {
        "id": index + 1,
        "question": question,
        "answer": answer,
        "score": score,
        "status": "validated" if score > 0.75 else "low_quality",
        "attempt": regenerations,
        "model": rng.choice(MODELS),
        "latency_ms": latency,
        "timestamp": completed.isoformat().replace("+00:00", "Z"),
        "reference_answer": reference,
    }
    # An export is rarely complete: some optional fields are missing here and there.
    for optional in ("reference_answer", "model", "latency_ms", "status"):
        if rng.random() < 0.05:
            del item[optional]
    return item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="response.json", type=Path)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--jsonl", action="store_true", help="JSON lines instead of a JSON array")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    now = datetime.now(timezone.utc)
    records = [record(rng, i, now) for i in range(args.count)]
    with args.out.open("w", encoding="utf-8") as handle:
        if args.jsonl:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        else:
            json.dump(records, handle, ensure_ascii=False, indent=1)
    print(f"wrote {len(records)} records to {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
