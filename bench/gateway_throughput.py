"""How many calls per second the built-in gateway answers (so it is never the bottleneck of a
consumer benchmark), and how close it keeps to its configured latency under concurrency.

    python bench/gateway_throughput.py [--calls 2000] [--concurrency 32] [--latency-ms 0] [--port 21090]

Starts ``python -m services.llm_gateway`` as its own process, drives it with the consumer's
SimulatedBackend, prints calls/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import httpx

from services.common.prompts import build_prompt
from services.common.knowledge_base import default_knowledge_base
from services.llm_consumer.backends import SimulatedBackend


async def drive(url: str, calls: int, concurrency: int) -> tuple[float, list[float]]:
    questions = [e.question for e in default_knowledge_base().entries]
    latencies: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)
    async with SimulatedBackend(url, "qactl-sim", 30.0) as backend:

        async def one(i: int) -> None:
            async with semaphore:
                result = await backend.generate(build_prompt(questions[i % len(questions)]))
                latencies.append(result.latency_ms)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=21090)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACTL_")}
    env.update(
        QACTL_GATEWAY__PORT=str(args.port),
        QACTL_GATEWAY__LATENCY_MS_MIN=str(args.latency_ms),
        QACTL_GATEWAY__LATENCY_MS_MAX=str(args.latency_ms),
    )
    server = subprocess.Popen([sys.executable, "-m", "services.llm_gateway"], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{url}/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        asyncio.run(drive(url, min(200, args.calls), args.concurrency))  # warm-up
        elapsed, latencies = asyncio.run(drive(url, args.calls, args.concurrency))
    finally:
        server.terminate()
        server.wait(timeout=10)
    q = statistics.quantiles(latencies, n=100)
    print(f"gateway: {args.calls} calls, concurrency {args.concurrency}, configured latency {args.latency_ms:g} ms")
    print(f"  throughput {args.calls / elapsed:,.0f} calls/s")
    print(f"  latency p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms (client-side, includes queueing in the server)")


if __name__ == "__main__":
    main()
