"""Pairs/s of the score job's scorer against bert_score.BERTScorer on the same model and inputs.

Inputs: every (answer, reference) pair of the knowledge base (paraphrases and degraded answers
against their reference), shuffled, as the job would receive them. Measured in one run,
interleaved round by round, best round kept (the box is shared: the load average is printed):

- library, one call per pair:  BERTScorer.score([c], [r]) for each pair
- library, batched:            BERTScorer.score(cands, refs), one call (its batch_size 64)
- job scorer, as the job runs: Scorer.f1 on micro-batches of --micro-batch pairs, starting
  with an empty reference cache (it fills as the stream goes)
- job scorer, steady state:    the same stream again, references cached (regenerations of a
  question, and repeated questions, reuse their reference)
- job scorer, one call:        all pairs in one call, empty cache (batching alone)

each job mode once per encoder backend of --backends (``onnx``: ONNX Runtime, the default;
``torch``: the fallback), and the largest F1 difference of each backend against each library
mode.

    python bench/bench_scorer.py [--rounds 3] [--micro-batch 16] [--per-pair-rounds 1] [--threads N]
                                 [--backends onnx,torch]

On a box shared with other work, ``--threads 1`` makes the CPU-seconds column a fair measure of
the work each mode does (no spinning threads waiting for a descheduled partner).

Last, a floor: the least float32 work any exact scorer must do on these inputs (every distinct
sentence's tokens through the encoder's layers once, no padding; the references left out when
they are cached) and how long only its matrix products take at this machine's best rate, timed
here with numpy's BLAS on the encoder's own shapes, all tokens in one product. No scorer of the
same model at the same precision can beat that time, so ``library batched / floor`` is the most
any of them could reach against the library here.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from functools import partial

import torch

from flink.calibrate import pair_sets
from flink.scoring import Scorer, model_dir
from services.common.knowledge_base import load_knowledge_base


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def encoder_flops(token_counts: list[int], hidden: int, intermediate: int, layers: int) -> float:
    """Multiply-adds x 2 of the encoder on sentences of these lengths: projections and feed
    forward per token, attention scores and mixing per token pair."""
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * intermediate)
    return layers * sum(n * per_token + 2 * 2 * n * n * hidden for n in token_counts)


def gemm_floor_seconds(tokens: int, hidden: int, intermediate: int, layers: int, repeats: int = 3) -> float:
    """Seconds the encoder's matrix products alone take for ``tokens`` tokens at once: the fused
    query/key/value projection, the output projection and the two feed-forward products per
    layer, by numpy's BLAS (best of ``repeats``)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((tokens, hidden), dtype=np.float32)
    inner = rng.standard_normal((tokens, intermediate), dtype=np.float32)
    weights = [
        (x, rng.standard_normal((hidden, 3 * hidden), dtype=np.float32)),
        (x, rng.standard_normal((hidden, hidden), dtype=np.float32)),
        (x, rng.standard_normal((hidden, intermediate), dtype=np.float32)),
        (inner, rng.standard_normal((intermediate, hidden), dtype=np.float32)),
    ]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _layer in range(layers):
            for left, right in weights:
                left @ right
        best = min(best, time.perf_counter() - started)
    return best


def print_floor(scorer: Scorer, cands: list[str], refs: list[str], library_seconds: float) -> None:
    from transformers import AutoConfig, AutoTokenizer  # after Scorer() set the offline switches

    config = AutoConfig.from_pretrained(str(scorer.path), local_files_only=True)
    hidden, intermediate, layers = config.hidden_size, config.intermediate_size, scorer.num_layers
    tokenizer = AutoTokenizer.from_pretrained(str(scorer.path), local_files_only=True)

    def lengths(texts: set[str]) -> list[int]:
        return [len(tokenizer(t)["input_ids"]) for t in texts]

    distinct_refs = {r.strip() for r in refs}
    everything = lengths(distinct_refs | {c.strip() for c in cands})
    answers_only = lengths({c.strip() for c in cands} - distinct_refs)
    print(f"floor (float32, {layers} layers, hidden {hidden}, feed-forward {intermediate}):")
    for label, counts in (("empty cache", everything), ("refs cached", answers_only)):
        gflop = encoder_flops(counts, hidden, intermediate, layers) / 1e9
        seconds = gemm_floor_seconds(sum(counts), hidden, intermediate, layers)
        print(f"  {label:<12} {len(counts)} sentences, {sum(counts)} tokens, {gflop:.1f} GFLOP; matrix "
              f"products alone {seconds:.2f} s ({gflop / seconds:.0f} GFLOP/s) -> at most "
              f"{library_seconds / seconds:.2f}x the library batched ({library_seconds:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-pair-rounds", type=int, default=1, help="the slow mode, fewer rounds")
    parser.add_argument("--micro-batch", type=int, default=16, help="the job's --batch-size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="threads for all (default: the scorer's)")
    parser.add_argument("--backends", default="onnx,torch", help="the scorer's encoder backends to measure")
    args = parser.parse_args()

    sets = pair_sets(load_knowledge_base())
    pairs = sets.paraphrase + sets.degraded
    random.Random(args.seed).shuffle(pairs)
    cands, refs = [c for c, _ in pairs], [r for _, r in pairs]

    scorers: dict[str, Scorer] = {}
    load_seconds: dict[str, float] = {}
    for backend in args.backends.split(","):
        load_started = time.perf_counter()
        scorers[backend] = Scorer(threads=args.threads, backend=backend)
        load_seconds[backend] = time.perf_counter() - load_started
        if scorers[backend].backend != backend:
            raise SystemExit(f"the {backend} backend did not start (see the log above)")
    num_layers = next(iter(scorers.values())).num_layers
    from bert_score import BERTScorer

    library = BERTScorer(model_type=str(model_dir()), num_layers=num_layers)
    threads = next(iter(scorers.values())).threads

    def library_score(cands: list[str], refs: list[str]):
        torch.set_num_threads(threads)  # torch's count is process-wide: the scorers set theirs
        return library.score(cands, refs)

    def job_stream(scorer: Scorer) -> list[float]:
        out: list[float] = []
        for start in range(0, len(pairs), args.micro_batch):
            out += scorer.f1(cands[start : start + args.micro_batch], refs[start : start + args.micro_batch])
        return out

    def job_cold(scorer: Scorer) -> None:
        scorer.clear_cache()
        job_stream(scorer)

    def job_one_call(scorer: Scorer) -> None:
        scorer.clear_cache()
        scorer.f1(cands, refs)

    modes: dict[str, Callable[[], object]] = {
        "library, one call per pair": lambda: [library_score([c], [r]) for c, r in pairs],
        "library, batched": lambda: library_score(cands, refs),
    }
    for backend, scorer in scorers.items():
        modes[f"{backend}: job scorer, micro-batches of {args.micro_batch}, cold cache"] = partial(job_cold, scorer)
        modes[f"{backend}: job scorer, micro-batches of {args.micro_batch}, refs cached"] = partial(job_stream, scorer)
        modes[f"{backend}: job scorer, one call, cold cache"] = partial(job_one_call, scorer)
    best: dict[str, tuple[float, float]] = {}
    load_before = os.getloadavg()
    for round_number in range(args.rounds):
        for name, run in modes.items():
            if name.startswith("library, one call") and round_number >= args.per_pair_rounds:
                continue
            wall, cpu = timed(run)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, cpu)
    load_after = os.getloadavg()

    lib_single = [library_score([c], [r])[2].item() for c, r in pairs]
    lib_batched = library_score(cands, refs)[2].tolist()

    loads = ", ".join(f"{backend} {seconds:.1f} s" for backend, seconds in load_seconds.items())
    print(f"{len(pairs)} pairs ({len(set(refs))} references), layer {num_layers}, "
          f"threads {threads} (the library's torch, the scorers' encoder), scorer load {loads}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (2 cores; best of "
          f"{args.rounds} rounds)")
    reference = len(pairs) / best["library, batched"][0]
    print(f"{'mode':<57} {'wall s':>8} {'cpu s':>8} {'pairs/s':>9} {'x batched':>10}")
    for name, (wall, cpu) in best.items():
        rate = len(pairs) / wall
        print(f"{name:<57} {wall:>8.2f} {cpu:>8.2f} {rate:>9.1f} {rate / reference:>10.2f}")
    for backend, scorer in scorers.items():
        ours = job_stream(scorer)
        print(f"{backend}: max |F1 job - library one call per pair| = "
              f"{max(abs(a - b) for a, b in zip(ours, lib_single)):.2e}")
        diffs = [abs(a - b) for a, b in zip(ours, lib_batched)]
        print(f"{backend}: max |F1 job - library batched|           = {max(diffs):.2e} "
              f"({sum(d > 1e-4 for d in diffs)} pairs above 1e-4: the library's padding artefact, see SCORING.md)")
        print(f"{backend}: reference cache: {scorer.cache_info()}")
    print_floor(next(iter(scorers.values())), cands, refs, best["library, batched"][0])


if __name__ == "__main__":
    main()
