"""The whole pipeline on the real model, side by side with the model server's own limit, in one run.

A full stack (`Stack(settings).up()`, as `qactl up`: Kafka, Flink and the score job, PostgreSQL,
Redis, the llm-server with SmolLM2, the gateway in front of it, the services) is brought up on
its own ports (``--port-base``, default 30000, the layout of tests/stack.py) and a state dir
under /tmp, with ``llm.backend = "local"``, the model server's default slots and the consumers'
default concurrency; it is taken down (and its state removed) at the end. In order:

1. up times: the first `up` in the fresh state dir (caches warm: binary, model, jars), then
   `down` and a second `up` on the same state (the "warm" figure of the issue).
2. the server's limit: the stack's own llm-server (the same running process the pipeline uses),
   sent the pipeline's request straight (no gateway) at concurrency = its slots, with
   bench_llm_server's functions (`requests_on`): answers/s, tokens/s, the server's CPU.
3. the original report's table: ``qactl gateway fault 503 --rate 0.15``, then
   ``qactl traffic --sync-baseline --count N --unique``, then ``qactl metrics``, all through the
   CLI with the stack's settings (QACTL_* variables), their output printed as is; the fault is
   cleared afterwards.
4. the pipeline under a backlog: ``--backlog`` knowledge-base questions, tagged unique, posted
   to the storage API at once. LLM calls completed per second are counted at the gateway
   (`/admin/stats`: every call it forwarded to the model server and got an answer for,
   "upstream_*" outcomes; a regeneration is a call like any other), sampled every second, over a
   steady window: from ``--settle`` seconds after the first call until the consumers have
   nothing left on questions-pending (their group lag is 0) or ``--window`` seconds pass. The
   server's CPU share (psutil, cores) over the same window, and the model server's completion
   tokens (its /metrics) as a cross-check.
5. perceived latency while the model is saturated: during that window a separate sender posts
   new unique questions to ``POST /query`` at ``--sender-rate`` for ``--sender-seconds``; p50/p99
   of the time to the 202, as the client saw it.
6. the server's limit again, right after the window: the llm-consumers stopped (the rest of the
   stack up, the backlog left in Kafka), the server idle, the same requests as in 2. The machine
   may be shared: the ratio is given against both limits, and so is the rate per CPU-second of
   the server (answers or calls / the server's CPU seconds), the comparison other work on the
   machine disturbs least.
7. resident memory of the model server: psutil RSS, sampled every 0.1 s over the whole run, peak.

The backlog is not drained at the end (the stack and its state are removed): the figures are
those of the window. Targets (issue 11): pipeline >= 95 % of the server's limit; POST /query
p50 <= 20 ms, p99 <= 100 ms. Timing is printed, never asserted.

    python bench/bench_llm_pipeline.py
    python bench/bench_llm_pipeline.py --backlog 150 --window 120 --count 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_llm_server import PeakRss, counters  # noqa: E402
from qactl.client import kafka_admin  # noqa: E402
from qactl.client.api import AsyncStorageApiClient  # noqa: E402
from qactl.client.gateway import GatewayClient  # noqa: E402
from qactl.runtime import credentials  # noqa: E402
from qactl.client.llm_server import probe  # noqa: E402
from qactl.runtime import llm_server  # noqa: E402
from qactl.runtime.stack import Stack  # noqa: E402
from qactl.traffic import questions as question_sets  # noqa: E402
from qactl.traffic.stats import percentile  # noqa: E402
from services.common import topics  # noqa: E402
from services.common.backend_choice import consumer_concurrency  # noqa: E402
from services.common.prompts import build_prompt  # noqa: E402
from services.common.settings import QactlSettings  # noqa: E402
from services.llm_consumer.backends import LLMCallError, LocalBackend, Sampling  # noqa: E402
from services.llm_consumer.consumer import GROUP  # noqa: E402
from tests.stack import port_layout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


# --- settings (pure) ---


def stack_values(base: int, state_dir: str) -> dict[str, Any]:
    """The settings sections of the bench's stack: tests/stack.py's port layout, the local model."""
    return {**port_layout(base, state_dir), "llm": {"backend": "local"}}


def environment(values: dict[str, Any], prefix: str = "QACTL_") -> dict[str, str]:
    """The same settings as QACTL_* variables (sections joined by "__"), for the CLI."""
    env: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key.upper()}"
        if isinstance(value, dict):
            env.update(environment(value, f"{name}__"))
        else:
            env[name] = str(value)
    return env


# --- figures (pure) ---


def upstream_calls(by_outcome: dict[str, int]) -> int:
    """Calls the gateway forwarded to the model server and got an answer for (any status)."""
    return sum(n for outcome, n in by_outcome.items() if outcome.startswith("upstream_"))


def window_rate(samples: list[tuple[float, int]], start: float, end: float) -> tuple[float, float, int]:
    """(calls/s, seconds, calls) between the samples nearest to ``start`` and ``end`` (inside them).

    ``samples`` are (time, calls completed so far), in time order."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        raise ValueError("fewer than two samples inside the window")
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    return (c1 - c0) / (t1 - t0), t1 - t0, c1 - c0


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min) on {os.cpu_count()} CPUs"


# --- steps ---


def timed_up(stack: Stack) -> float:
    started = time.monotonic()
    stack.up()
    return time.monotonic() - started


def cli(env: dict[str, str], *args: str) -> str:
    """Run `qactl ARGS` with the stack's settings; its output, printed as it is."""
    code = "import sys; from qactl.cli.main import main; sys.argv[0] = 'qactl'; main()"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QACTL_")}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env={**clean, **env, "COLUMNS": "120"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = done.stdout + (done.stderr if done.stderr.strip() else "")
    print(f"$ qactl {' '.join(args)}   (exit {done.returncode})\n{out}", flush=True)
    return out


async def drive(backend: LocalBackend, prompts: list[str], concurrency: int) -> tuple[float, list[float], list[str]]:
    """bench_llm_server's callers, except that a failed request is counted, not fatal:
    (wall seconds, latencies of the answered requests in seconds, the failures)."""
    pending = iter(prompts)
    latencies: list[float] = []
    failures: list[str] = []

    async def caller() -> None:
        for prompt in pending:
            try:
                result = await backend.generate(prompt, attempt=0)
            except LLMCallError as exc:
                failures.append(str(exc))
            else:
                latencies.append(result.latency_ms / 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, failures


async def limit_requests(settings: QactlSettings, server: psutil.Process, prompts: list[str], warmup: list[str]):
    """bench_llm_server's `requests_on` at concurrency = slots, on the stack's own model server."""
    sampling = Sampling.from_settings(settings.llm)
    slots = settings.llm_server.slots
    url, model, timeout = f"{settings.llm_server.base_url}/v1", settings.llm_server.alias, settings.llm.timeout_seconds
    async with LocalBackend(url, model, timeout, sampling=sampling) as backend:
        await drive(backend, warmup, slots)
        tokens_before, cpu_before = counters(settings, server)
        seconds, latencies, failures = await drive(backend, prompts, slots)
        tokens_after, cpu_after = counters(settings, server)
    return seconds, latencies, failures, tokens_after - tokens_before, cpu_after - cpu_before


def server_limit(settings: QactlSettings, server: psutil.Process, requests: int, warmup: int) -> dict[str, Any]:
    questions = [q.question for q in question_sets.knowledge_base_questions()]
    prompts = [build_prompt(questions[i % len(questions)]) for i in range(requests)]
    warm = [build_prompt(q) for q in questions[-warmup:]]
    seconds, latencies, failures, tokens, cpu = asyncio.run(limit_requests(settings, server, prompts, warm))
    return {
        "slots": settings.llm_server.slots, "requests": len(latencies), "failures": failures, "seconds": seconds,
        "answers_per_second": len(latencies) / seconds, "tokens_per_second": tokens / seconds,
        "latency_p50": percentile(latencies, 0.5), "latency_max": max(latencies, default=None),
        "server_cpu_cores": cpu / seconds,
    }  # fmt: skip


async def post_all(settings: QactlSettings, texts: list[str]) -> list[float]:
    """Post every question at once; the 202 latencies (ms)."""
    async with AsyncStorageApiClient(settings.api.base_url, timeout=30.0, max_connections=64) as client:
        subs = await asyncio.gather(*(client.submit(t) for t in texts))
    return [s.latency_ms for s in subs if s.http_status == 202]


async def sender(settings: QactlSettings, tag: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Open-loop posts at ``rate``/s: (latencies of the 202s in ms, answers that were not 202)."""
    base = question_sets.knowledge_base_questions()
    chosen = question_sets.tagged(question_sets.take(base, int(rate * seconds)), tag)
    latencies: list[float] = []
    other = 0
    async with AsyncStorageApiClient(settings.api.base_url, timeout=10.0, max_connections=64) as client:
        t0 = time.perf_counter()

        async def one(i: int, text: str) -> None:
            nonlocal other
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            sub = await client.submit(text)
            if sub.http_status == 202:
                latencies.append(sub.latency_ms)
            else:
                other += 1

        await asyncio.gather(*(one(i, q.question) for i, q in enumerate(chosen)))
    return latencies, other


def tree_cpu(pid: int) -> float:
    """CPU seconds so far of a process and its children (Flink's Python workers, PostgreSQL's backends)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            total += sum(proc.cpu_times()[:2])
        except psutil.Error:
            continue
    return total


def stack_cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds so far per component of the stack (its processes and their children)."""
    found: dict[str, float] = {}
    for component in stack.components:
        for spec in component.processes():
            pid = stack.supervisor.state(spec.name).pid
            if pid is not None:
                found[component.name] = found.get(component.name, 0.0) + tree_cpu(pid)
    return found


def pending_lag(settings: QactlSettings) -> int:
    lag = kafka_admin.consumer_group_lag(settings.kafka.bootstrap, GROUP)
    return sum(v for (topic, _), v in lag.items() if topic == topics.QUESTIONS_PENDING.name)


def backlog_run(stack: Stack, server: psutil.Process, args: argparse.Namespace) -> dict[str, Any]:
    """Steps 4 and 5: the backlog, the counting window and the sender inside it."""
    settings = stack.settings
    gateway = GatewayClient.from_settings(settings)
    gateway.clear_faults()
    run = secrets.token_hex(3)
    base = question_sets.knowledge_base_questions()
    backlog = [q.question for q in question_sets.tagged(question_sets.take(base, args.backlog), f"b{run}")]
    before = upstream_calls(gateway.stats().by_outcome)
    tokens_before = probe(settings.llm_server.base_url).tokens_predicted or 0.0
    posted_at = time.monotonic()
    backlog_202 = asyncio.run(post_all(settings, backlog))
    print(f"backlog: {len(backlog)} questions posted in {time.monotonic() - posted_at:.1f} s "
          f"({len(backlog_202)} answered 202), {load()}", flush=True)  # fmt: skip

    samples: list[tuple[float, int]] = []
    first_call = None
    window: dict[str, float] = {}
    cpu_at: dict[str, float] = {}
    tokens_at: dict[str, float] = {}
    sender_result: dict[str, Any] = {}
    sender_task = None
    busy_slots: list[tuple[float, float]] = []
    loop = asyncio.new_event_loop()
    deadline = time.monotonic() + args.settle + args.window + 60
    while time.monotonic() < deadline:
        now = time.monotonic()
        calls = upstream_calls(gateway.stats().by_outcome) - before
        samples.append((now, calls))
        if first_call is None and calls > 0:
            first_call = now
            window["start"] = now + args.settle
        if "start" in window and now >= window["start"] and "cpu" not in cpu_at:
            cpu_at["cpu"] = sum(server.cpu_times()[:2])
            components_before = stack_cpu(stack)
            tokens_at["start"] = probe(settings.llm_server.base_url).tokens_predicted or 0.0
            window["start"] = now
            # The sender starts with the window, in a thread of its own (its own event loop).
            sender_result["started"] = now
            sender_task = loop.run_in_executor(
                None, lambda: asyncio.run(sender(settings, f"s{run}", args.sender_rate, args.sender_seconds))
            )
        if "cpu" in cpu_at:
            state = probe(settings.llm_server.base_url)  # requests in the server's slots, and queued
            busy_slots.append((state.requests_processing or 0.0, state.requests_deferred or 0.0))
            lag = pending_lag(settings)
            if lag == 0 or now - window["start"] >= args.window:
                window["end"] = now
                window["ended_by"] = "backlog gone (lag 0)" if lag == 0 else f"--window {args.window:.0f} s"
                window["lag_at_end"] = lag
                break
        time.sleep(1.0)
    else:
        raise SystemExit("no LLM call reached the gateway in time: see the logs under the state dir")
    cpu_seconds = sum(server.cpu_times()[:2]) - cpu_at["cpu"]
    components_after = stack_cpu(stack)
    tokens_end = probe(settings.llm_server.base_url).tokens_predicted or 0.0
    if sender_task is not None:
        latencies, other = loop.run_until_complete(sender_task)
        sender_result.update(latencies=latencies, other=other)
    loop.close()
    rate, seconds, calls = window_rate(samples, window["start"], window["end"])
    sent_from = sender_result["started"]
    sender_rate, sender_window, _ = window_rate(
        samples, sent_from, min(window["end"], sent_from + args.sender_seconds + 1)
    )
    gateway.close()
    span = window["end"] - window["start"]
    cores = {name: (components_after.get(name, 0.0) - used) / span for name, used in components_before.items()}
    return {
        "components_cores": cores,
        "slots_busy_mean": sum(b for b, _ in busy_slots) / len(busy_slots),
        "slots_full_share": sum(1 for b, _ in busy_slots if b >= settings.llm_server.slots) / len(busy_slots),
        "deferred_mean": sum(d for _, d in busy_slots) / len(busy_slots),
        "backlog": len(backlog), "backlog_202_ms": backlog_202, "first_call_after": first_call - posted_at,
        "rate": rate, "seconds": seconds, "calls": calls, "ended_by": window["ended_by"],
        "lag_at_end": window["lag_at_end"], "server_cpu_cores": cpu_seconds / seconds,
        "tokens_per_second": (tokens_end - tokens_at["start"]) / seconds,
        "tokens_total": tokens_end - tokens_before,
        "rate_during_sender": sender_rate, "sender_window": sender_window,
        "sender_202_ms": sender_result.get("latencies", []), "sender_other": sender_result.get("other", 0),
    }  # fmt: skip


def stop_consumers(stack: Stack) -> None:
    """Stop the llm-consumers (nothing else), then wait until the model server has no request."""
    for spec in stack.component("llm-consumer").processes():
        stack.supervisor.stop(spec.name, timeout=spec.stop_timeout)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = probe(stack.settings.llm_server.base_url)
        if not state.requests_processing and not state.requests_deferred:
            return
        time.sleep(0.5)


def top_cpu(exclude: set[int], count: int = 6) -> str:
    """The busiest processes right now (a 1 s sample), the stack's or not: what else ran."""
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    rows = []
    for p in procs:
        try:
            rows.append((p.cpu_percent(None), p.info["pid"], " ".join((p.info["cmdline"] or [p.info["name"]])[:3])[:90]))
        except psutil.Error:
            continue
    rows.sort(reverse=True)
    return "\n".join(f"  {cpu:5.0f} %  {pid:>7}  {cmd}" for cpu, pid, cmd in rows[:count])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-base", type=int, default=30000)
    parser.add_argument("--limit-requests", type=int, default=24, help="server-limit requests (+4 warm-up)")
    parser.add_argument("--count", type=int, default=20, help="questions of the sync-baseline run")
    parser.add_argument("--fault-rate", type=float, default=0.15, help="503s injected at the gateway for that run")
    parser.add_argument("--backlog", type=int, default=100)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after the first call before the window")
    parser.add_argument("--window", type=float, default=90.0, help="the counting window's longest length")
    parser.add_argument("--sender-rate", type=float, default=20.0)
    parser.add_argument("--sender-seconds", type=float, default=15.0)
    args = parser.parse_args()

    state_dir = f"/tmp/qactl-bench-pipeline-{args.port_base}"
    values = stack_values(args.port_base, state_dir)
    # Validated, not loaded (no QACTL_* or ./qactl.toml), with the state dir's credentials as `qactl up`.
    settings = credentials.with_stored(QactlSettings.model_validate(values), create=True)
    env = environment(values)
    stack = Stack(settings)
    stack.down(purge=True)
    shutil.rmtree(state_dir, ignore_errors=True)
    conditions = {"load_before": load()}
    print(f"state dir {state_dir}, ports {args.port_base}+, backend local, model server slots "
          f"{settings.llm_server.slots}, threads {settings.llm_server.threads}, consumers "
          f"{settings.services.llm_consumer_replicas} x {consumer_concurrency(settings, 'local')} calls, "
          f"max_tokens {settings.llm.max_tokens}; {conditions['load_before']}", flush=True)  # fmt: skip
    print("busiest processes before:\n" + top_cpu(set()), flush=True)

    rss = None
    try:
        first_up = timed_up(stack)
        print(f"first up (fresh state dir, caches warm): {first_up:.1f} s, {load()}", flush=True)
        stack.down()
        warm_up = timed_up(stack)
        print(f"warm up (down, then up on the same state): {warm_up:.1f} s, {load()}", flush=True)
        pid = stack.supervisor.state(llm_server.NAME).pid
        server = psutil.Process(pid)
        rss = PeakRss(pid)
        rss_idle = server.memory_info().rss

        limit = server_limit(settings, server, args.limit_requests, 4)
        limit_load = load()
        print(f"server limit: {limit['answers_per_second']:.2f} answers/s at {limit['slots']} concurrent requests, "
              f"{limit['tokens_per_second']:.0f} tokens/s, p50 {limit['latency_p50']:.2f} s, max {limit['latency_max']:.2f} s, "
              f"{len(limit['failures'])} failed {limit['failures'][:2]}, server CPU "
              f"{limit['server_cpu_cores']:.2f} cores; {limit_load}", flush=True)  # fmt: skip

        print(f"\n--- the original report's table: {args.count} questions, {args.fault_rate:.0%} 503s at the gateway ---")
        cli(env, "gateway", "fault", "503", "--rate", str(args.fault_rate))
        traffic_load_before = load()
        cli(env, "traffic", "--sync-baseline", "--count", str(args.count), "--unique")
        traffic_load_after = load()
        cli(env, "metrics")
        cli(env, "gateway", "clear")

        print(f"\n--- the pipeline under a backlog of {args.backlog} ---", flush=True)
        backlog_load_before = load()
        busy = backlog_run(stack, server, args)
        backlog_load_after = load()
        print("busiest processes at the end of the window:\n" + top_cpu(set()), flush=True)
        # The limit again, on the same server right after the window (consumers stopped, the
        # rest of the stack up): the machine is shared, so the ratio is given against both.
        stop_consumers(stack)
        after = server_limit(settings, server, args.limit_requests, 4)
        after_load = load()
        print(f"server limit after the window (consumers stopped): {after['answers_per_second']:.2f} answers/s, "
              f"{after['tokens_per_second']:.0f} tokens/s, {len(after['failures'])} failed, server CPU "
              f"{after['server_cpu_cores']:.2f} cores; {after_load}", flush=True)  # fmt: skip
        rss_peak = rss.stop()
        rss = None
    except BaseException:
        kept = Path(f"/tmp/qactl-bench-pipeline-logs-{args.port_base}")
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(Path(state_dir) / "logs", kept, dirs_exist_ok=True)
        print(f"failed: the stack's logs are kept in {kept}", flush=True)
        raise
    finally:
        if rss is not None:
            rss.stop()
        stack.down(purge=True)
        shutil.rmtree(state_dir, ignore_errors=True)

    ratio = busy["rate"] / limit["answers_per_second"]
    ratio_after = busy["rate"] / after["answers_per_second"]
    # Per CPU-second of the server: the comparison the machine's other work disturbs least.
    per_cpu = {
        "before": limit["answers_per_second"] / limit["server_cpu_cores"],
        "pipeline": busy["rate"] / busy["server_cpu_cores"],
        "after": after["answers_per_second"] / after["server_cpu_cores"],
    }
    p = busy["sender_202_ms"]
    b = busy["backlog_202_ms"]
    fmt = lambda v: "-" if v is None else f"{v:.1f} ms"  # noqa: E731
    print("\n| figure | value | target | conditions |")
    print("|---|---|---|---|")
    print(f"| server limit (its own llm-server, direct, {limit['slots']} concurrent = slots, "
          f"{limit['requests']} answered, {len(limit['failures'])} failed) "
          f"| {limit['answers_per_second']:.2f} answers/s, {limit['tokens_per_second']:.0f} tokens/s | | "
          f"server CPU {limit['server_cpu_cores']:.2f} cores; {limit_load} |")
    print(f"| pipeline: LLM calls completed/s (gateway upstream_* count, {busy['seconds']:.0f} s window, "
          f"{busy['calls']} calls; ended by {busy['ended_by']}, lag then {busy['lag_at_end']}) "
          f"| {busy['rate']:.2f} calls/s, {busy['tokens_per_second']:.0f} tokens/s | | "
          f"server CPU {busy['server_cpu_cores']:.2f} cores; {backlog_load_before} before, {backlog_load_after} after |")
    print(f"| server limit again after the window (consumers stopped; {after['requests']} answered, "
          f"{len(after['failures'])} failed) | {after['answers_per_second']:.2f} answers/s, "
          f"{after['tokens_per_second']:.0f} tokens/s | | server CPU {after['server_cpu_cores']:.2f} cores; {after_load} |")
    print(f"| pipeline / server limit (before; after) | {ratio:.0%}; {ratio_after:.0%} | >= 95 % | see the CPU column |")
    print(f"| answers (calls) per server CPU-second: limit before / pipeline / limit after "
          f"| {per_cpu['before']:.2f} / {per_cpu['pipeline']:.2f} / {per_cpu['after']:.2f} "
          f"({per_cpu['pipeline'] / max(per_cpu['before'], per_cpu['after']):.0%} of the better limit) | | |")
    print(f"| pipeline calls/s while the sender posted ({busy['sender_window']:.0f} s) | {busy['rate_during_sender']:.2f} | | |")
    print(f"| POST /query 202, sender {args.sender_rate:g}/s for {args.sender_seconds:g} s during the window "
          f"({len(p)} x 202, {busy['sender_other']} other) | p50 {fmt(percentile(p, 0.5))}, p99 {fmt(percentile(p, 0.99))}, "
          f"max {fmt(max(p) if p else None)} | p50 <= 20 ms, p99 <= 100 ms | model saturated |")
    print(f"| POST /query 202, the backlog's {len(b)} posted at once | p50 {fmt(percentile(b, 0.5))}, "
          f"p99 {fmt(percentile(b, 0.99))} | | a burst, not the target's condition |")
    print(f"| model server RSS | {rss_idle / MIB:.0f} MiB idle after up, {rss_peak / MIB:.0f} MiB peak | | "
          f"{limit['slots']} slots x {settings.llm_server.context_per_slot} context |")
    print(f"| qactl up, first in a fresh state dir (caches warm) | {first_up:.1f} s | | {conditions['load_before']} before |")
    print(f"| qactl up, warm (down then up) | {warm_up:.1f} s | | |")
    print(f"| sync-baseline run | see the table above | | {traffic_load_before} before, {traffic_load_after} after |")
    print(f"| slots busy in the window (the server's /metrics requests_processing, 1 s samples) "
          f"| mean {busy['slots_busy_mean']:.2f} of {limit['slots']}, all {limit['slots']} busy in "
          f"{busy['slots_full_share']:.0%} of samples, queued mean {busy['deferred_mean']:.2f} | | |")
    print("| CPU in the window, cores per component | "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(busy["components_cores"].items(), key=lambda kv: -kv[1]))
          + " | | the bench process itself not included |")
    print(f"\nfirst LLM call {busy['first_call_after']:.1f} s after the backlog's first post; completion tokens over "
          f"the backlog run {busy['tokens_total']:.0f}; at the end {load()}")


if __name__ == "__main__":
    main()
