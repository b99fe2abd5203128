"""The local model server alone: answers/s and tokens/s at 1, 2 and 4 concurrent requests (the limit).

For each concurrency level C, a llama-server is started through the runtime, as `qactl up`
starts the `llm-server` component (`qactl.runtime.llm_server.process` under the `Supervisor`),
with C slots (`--parallel C`: slots = concurrent requests) and ``--threads`` threads, on a free
port and a state dir under /tmp; it is stopped after the level, so every level starts afresh.

The requests are the pipeline's own: `LocalBackend.generate(build_prompt(question))`, attempt 0,
with the `Sampling` of the settings' `LLMSettings` (max tokens, temperature, seed), sent straight
to the server (no gateway). The questions are the knowledge base's, in order (cycled if
``--requests`` is larger); C callers each send the next one as soon as their last is answered.
A warm-up of ``--warmup`` requests (the knowledge base's last questions) runs first, not counted.
A request has the pipeline's timeout (``llm.timeout_seconds``, 30 s; QACTL_LLM__TIMEOUT_SECONDS).

Per level:
- answers/s: requests / wall seconds from the first sent to the last answered;
- completion tokens/s: tokens the server generated over the level, from its /metrics counter
  `llamacpp:tokens_predicted_total` (read before and after), / the same wall seconds;
- latency p50/p95/max of one request, as the client saw it (LLMResult.latency_ms);
- the server's resident memory: psutil RSS of the llama-server process, sampled every 0.1 s
  from its start to its stop, peak;
- start: seconds from the process start to /health 200 (the model loaded);
- server CPU: the server's CPU seconds over the level / wall seconds, in cores (at most
  ``--threads`` plus a little): below that, the server was waiting for the CPU, not for work;
- load: the 1-minute load average at the end of the level (the machine may be shared).

The best answers/s is "the server's limit", which the pipeline is measured against. On a shared
machine read the server CPU column first: llama.cpp's threads wait for each other at every step,
so a server short of a core loses far more than its share (a level at 1 core of 2 ran at a
quarter of the speed of one at 1.7), and that level measured the other work, not the server.

    python bench/bench_llm_server.py                        # C = 1 2 4, 24 requests each
    python bench/bench_llm_server.py --concurrency 2 2      # the same level twice: the spread
    python bench/bench_llm_server.py --json                 # also the figures as JSON, last line

The server's binary and model come from the qactl cache (built or fetched once, as `qactl up` does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qactl.client.llm_server import probe  # noqa: E402
from qactl.runtime import llm_server  # noqa: E402
from qactl.runtime.supervisor import Supervisor  # noqa: E402
from qactl.traffic.stats import percentile  # noqa: E402
from services.common.knowledge_base import default_knowledge_base  # noqa: E402
from services.common.prompts import build_prompt  # noqa: E402
from services.common.settings import QactlSettings, load_settings  # noqa: E402
from services.llm_consumer.backends import LLMCallError, LocalBackend, Sampling  # noqa: E402

MIB = 1024 * 1024


# --- figures (pure) ---


def level_figures(
    concurrency: int, latencies: list[float], seconds: float, tokens: float, cpu_seconds: float,
    rss_peak: int, start_seconds: float, load: float,
) -> dict[str, float]:
    """One level's row: rates over the wall ``seconds``, latencies in seconds, memory in MiB."""
    answers = len(latencies)
    return {
        "concurrency": concurrency,
        "requests": answers,
        "seconds": seconds,
        "answers_per_second": answers / seconds,
        "tokens_per_second": tokens / seconds,
        "tokens_per_answer": tokens / answers,
        "latency_p50": percentile(latencies, 0.5),
        "latency_p95": percentile(latencies, 0.95),
        "latency_max": max(latencies),
        "server_cpu_cores": cpu_seconds / seconds,
        "rss_peak_mib": rss_peak / MIB,
        "start_seconds": start_seconds,
        "load": load,
    }  # fmt: skip


def best(rows: list[dict[str, float]]) -> dict[str, float]:
    """The level with the most answers/s: the server's limit."""
    return max(rows, key=lambda row: row["answers_per_second"])


def table(rows: list[dict[str, float]]) -> str:
    lines = [
        "| slots = concurrent requests | requests | answers/s | completion tokens/s | tokens/answer "
        "| latency p50 | p95 | max | server CPU | RSS peak | start to healthy | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['answers_per_second']:.2f} | {r['tokens_per_second']:.0f} | "
            f"{r['tokens_per_answer']:.0f} | {r['latency_p50']:.2f} s | {r['latency_p95']:.2f} s | "
            f"{r['latency_max']:.2f} s | {r['server_cpu_cores']:.2f} cores | {r['rss_peak_mib']:.0f} MiB | "
            f"{r['start_seconds']:.1f} s | {r['load']:.2f} |"
        )
    return "\n".join(lines)


# --- measuring ---


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_settings(state_dir: Path, slots: int, threads: int) -> QactlSettings:
    return load_settings(state_dir=state_dir, llm_server={"port": free_port(), "slots": slots, "threads": threads})


class PeakRss:
    """The peak resident memory of one process, sampled in a thread until ``stop``."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.peak = 0
        self._process = psutil.Process(pid)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stopped.set()
        self._thread.join()
        return self.peak


async def drive(backend: LocalBackend, prompts: list[str], concurrency: int) -> tuple[float, list[float]]:
    """(wall seconds, each request's latency in seconds) with ``concurrency`` callers in a loop."""
    pending = iter(prompts)
    latencies: list[float] = []

    async def caller() -> None:
        for prompt in pending:
            result = await backend.generate(prompt, attempt=0)
            latencies.append(result.latency_ms / 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def counters(settings: QactlSettings, server: psutil.Process) -> tuple[float, float]:
    """(completion tokens generated so far, per the server's /metrics; its CPU seconds so far)."""
    tokens = probe(settings.llm_server.base_url).tokens_predicted
    if tokens is None:
        raise SystemExit("the server's /metrics did not give llamacpp:tokens_predicted_total")
    return tokens, sum(server.cpu_times()[:2])


async def requests_on(
    settings: QactlSettings, server: psutil.Process, concurrency: int, prompts: list[str], warmup: list[str]
):
    """(wall seconds, latencies, completion tokens, server CPU seconds) of the measured requests."""
    sampling = Sampling.from_settings(settings.llm)
    url, model, timeout = f"{settings.llm_server.base_url}/v1", settings.llm_server.alias, settings.llm.timeout_seconds
    async with LocalBackend(url, model, timeout, sampling=sampling) as backend:
        await drive(backend, warmup, concurrency)
        tokens_before, cpu_before = counters(settings, server)
        seconds, latencies = await drive(backend, prompts, concurrency)
        tokens_after, cpu_after = counters(settings, server)
    return seconds, latencies, tokens_after - tokens_before, cpu_after - cpu_before


def run_level(
    state_dir: Path, concurrency: int, threads: int, prompts: list[str], warmup: list[str]
) -> dict[str, float]:
    """One level on a server of its own, started and stopped through the runtime."""
    settings = server_settings(state_dir, concurrency, threads)
    supervisor = Supervisor(settings)
    spec = llm_server.process(settings)
    started = time.monotonic()
    pid = supervisor.start(spec)
    rss = PeakRss(pid)
    try:
        supervisor.wait_healthy(spec)
        start_seconds = time.monotonic() - started
        run = requests_on(settings, psutil.Process(pid), concurrency, prompts, warmup)
        seconds, latencies, tokens, cpu_seconds = asyncio.run(run)
    finally:
        supervisor.stop(spec.name, timeout=spec.stop_timeout)
        peak = rss.stop()
    load = os.getloadavg()[0]
    return level_figures(concurrency, latencies, seconds, tokens, cpu_seconds, peak, start_seconds, load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4], help="levels (repeat one: its spread)")
    parser.add_argument("--requests", type=int, default=24, help="measured requests per level")
    parser.add_argument("--warmup", type=int, default=4, help="requests before each level, not counted")
    parser.add_argument("--threads", type=int, default=2, help="the server's CPU threads")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line, last")
    args = parser.parse_args()

    state_dir = Path(tempfile.mkdtemp(prefix="qactl-bench-llm-", dir="/tmp"))
    settings = server_settings(state_dir, 1, args.threads)
    llm_server.provision(settings, lambda line: print(line, flush=True))
    questions = [entry.question for entry in default_knowledge_base().entries]
    prompts = [build_prompt(questions[i % len(questions)]) for i in range(args.requests)]
    warmup = [build_prompt(q) for q in questions[-args.warmup :]] if args.warmup else []
    sampling = Sampling.from_settings(settings.llm)
    conditions = {
        "binary": str(llm_server.binary(settings)),
        "model": str(llm_server.model_file(settings)),
        "threads": args.threads,
        "context_per_slot": settings.llm_server.context_per_slot,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "questions": len(questions),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg()[0],
    }
    print(f"model {conditions['model']}, {args.threads} threads, max_tokens {sampling.max_tokens}, "
          f"temperature {sampling.temperature}, {args.requests} requests per level (+{args.warmup} warm-up), "
          f"load average {conditions['load_before']:.2f} on {conditions['cpus']} CPUs", flush=True)  # fmt: skip

    rows = []
    for concurrency in args.concurrency:
        try:
            rows.append(run_level(state_dir, concurrency, args.threads, prompts, warmup))
        except LLMCallError as exc:
            raise SystemExit(f"C={concurrency}: a request failed, {exc}; the server's log: {state_dir}/logs") from None
        r = rows[-1]
        print(
            f"C={concurrency}: {r['answers_per_second']:.2f} answers/s, {r['tokens_per_second']:.0f} tokens/s, "
            f"p50 {r['latency_p50']:.2f} s, p95 {r['latency_p95']:.2f} s, max {r['latency_max']:.2f} s, "
            f"server CPU {r['server_cpu_cores']:.2f} cores, RSS peak {r['rss_peak_mib']:.0f} MiB, "
            f"healthy after {r['start_seconds']:.1f} s (load {r['load']:.2f})",
            flush=True,
        )
    shutil.rmtree(state_dir, ignore_errors=True)  # kept when something failed: its logs tell why
    top = best(rows)
    print()
    print(table(rows))
    print("(completion tokens: the server's /metrics counter llamacpp:tokens_predicted_total over the level)")
    print(f"the server's limit: {top['answers_per_second']:.2f} answers/s at {top['concurrency']} concurrent requests "
          f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs at the end)")  # fmt: skip
    if args.json:
        print(json.dumps({"conditions": conditions, "levels": rows, "best": top}))


if __name__ == "__main__":
    main()
