"""Ingest benchmark: ``POST /query`` latency and throughput on the 202 path (distinct questions).

An open-loop load generator: requests are *scheduled* at a fixed rate and each latency is
measured from its scheduled time, so a slow server cannot hide its queueing by slowing the
generator down (no coordinated omission). It speaks HTTP/1.1 keep-alive over raw asyncio
streams on uvloop, because an HTTP client library costs more CPU per request than the server
under test and the machine has two cores.

    python bench/bench_ingest.py --rate 1000 --seconds 10          # needs the stack (qactl up)
    python bench/bench_ingest.py --url http://127.0.0.1:5001 --rate 0 --requests 5000   # flat out
    python bench/bench_ingest.py --wrk --connections 16 --seconds 10    # closed loop, wrk (C)

With ``--wrk`` the load comes from wrk (``apt-get install -y wrk``), which costs far less CPU
than any Python client: N connections each send their next request when the previous answer
arrives (closed loop), so it reports the throughput the API sustains and the latency at it.

Every accepted question also flows down the pipeline. With an instant LLM (the gateway's
default latency of 0) the consumers, the Flink job and the persister then work flat out on the
same cores as the API, and the figure says more about them than about ingest. To measure the
front door under the original plan's LLM, start the stack with
``QACTL_GATEWAY__LATENCY_MS_MIN=800 QACTL_GATEWAY__LATENCY_MS_MAX=5000 qactl up``. Start from
an empty backlog (``qactl down --purge``): a stack still draining earlier runs skews everything.

With ``--floor`` the same load goes instead to a trivial app (bench/ingest_floor_app.py) under
the same uvicorn, uvloop and httptools: what the server and the generator alone cost on this
machine, with the stack still running beside them. With ``--floor essential`` it goes to an app
that does only the 202 path's essential work (bench/ingest_essential_app.py): one Redis read,
one PostgreSQL claim, one produce acknowledged by Kafka, batched as the API batches them. The
gap between that and the API is the API's own overhead; the gap between it and the target is
what the design costs on this machine. ``--ladder`` runs them all in turn, then the API, and
prints a table: what each step costs, and what the API adds to the essential work:

    python bench/bench_ingest.py --ladder --rate 1000 --seconds 10

Prints p50/p90/p99/max latency, achieved throughput and the status codes. Every question is
distinct (a run id and a counter), so every request takes the full 202 path: cache miss,
database miss, one row in ``questions``, one message produced and acknowledged by Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


FLOOR_APPS = {"trivial": "ingest_floor_app:app", "essential": "ingest_essential_app:app"}


# The rungs of --ladder: (label, floor app or None for the API, essential steps or None for all).
LADDER = (
    ("server alone (trivial app)", "trivial", None),
    ("essential: Redis read only", "essential", "cache"),
    ("essential: PostgreSQL claim only", "essential", "claim"),
    ("essential: Kafka produce, acknowledged, only", "essential", "produce,ack"),
    ("essential: all three", "essential", None),
    ("storage API", None, None),
)


@dataclass
class Results:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    late_sends: int = 0  # requests the generator itself could not send within 1 ms of schedule


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def post(self, request: bytes) -> int:
        self.writer.write(request)
        status_line = await self.reader.readline()
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length:
            await self.reader.readexactly(length)
        return status


def build_request(host: str, path: str, question: str) -> bytes:
    body = json.dumps({"question": question}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def run(url: str, rate: float, total: int, connections: int, warmup: int) -> Results:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        reader, writer = await asyncio.open_connection(host, port)
        idle.put_nowait(Connection(reader, writer))
    run_id = uuid.uuid4().hex[:8]
    results = Results()

    async def one(index: int, scheduled: float, record: bool) -> None:
        conn = await idle.get()
        request = build_request(parts.netloc, "/query", f"bench {run_id} question number {index}: what is {index} squared?")
        try:
            status = await conn.post(request)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            results.errors[type(exc).__name__] += 1
            reader, writer = await asyncio.open_connection(host, port)
            idle.put_nowait(Connection(reader, writer))
            return
        idle.put_nowait(conn)
        if record:
            results.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
            results.statuses[status] += 1

    # Warm-up: connections, statement caches, the producer's first batches; not recorded.
    await asyncio.gather(*(one(-i - 1, time.perf_counter(), False) for i in range(warmup)))
    tasks = []
    start = time.perf_counter()
    for index in range(total):
        scheduled = start + index / rate if rate > 0 else time.perf_counter()
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.001:
            results.late_sends += 1
        tasks.append(asyncio.create_task(one(index, scheduled, True)))
        if rate <= 0 and len(tasks) % connections == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    results.elapsed = time.perf_counter() - start  # type: ignore[attr-defined]
    while not idle.empty():
        idle.get_nowait().writer.close()
    return results


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on ``port`` (Linux /proc), to measure its CPU time."""
    import glob
    import os

    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            if os.readlink(fd) in inodes:
                return int(fd.split("/")[2])
        except OSError:
            continue
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process, all threads."""
    import os

    if pid is None:
        return None
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_sums(url: str) -> dict[str, float]:
    """Sums and counts from the API's own /metrics: time inside the API, by step, and in its GC."""
    import urllib.request

    wanted = {
        'qactl_api_request_seconds_sum{endpoint="query",outcome="accepted"}': "request_sum",
        'qactl_api_request_seconds_count{endpoint="query",outcome="accepted"}': "request_count",
        'qactl_api_step_seconds_sum{step="cache"}': "cache_sum",
        'qactl_api_step_seconds_count{step="cache"}': "cache_count",
        'qactl_api_step_seconds_sum{step="database"}': "database_sum",
        'qactl_api_step_seconds_count{step="database"}': "database_count",
        'qactl_api_step_seconds_sum{step="kafka"}': "kafka_sum",
        'qactl_api_step_seconds_count{step="kafka"}': "kafka_count",
    }
    for generation in range(3):
        wanted[f'qactl_api_gc_pause_seconds_sum{{generation="{generation}"}}'] = f"gc{generation}_sum"
        wanted[f'qactl_api_gc_pause_seconds_count{{generation="{generation}"}}'] = f"gc{generation}_count"
    found = dict.fromkeys(wanted.values(), 0.0)
    try:
        text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    except OSError:
        return found
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            found[wanted[name]] = float(value)
    return found


def machine_load() -> str:
    try:
        return open("/proc/loadavg").read().split(" ", 3)[0]
    except OSError:
        return "?"


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def report(results: Results, rate: float) -> None:
    latencies = sorted(results.latencies_ms)
    elapsed = getattr(results, "elapsed", float("nan"))
    print(f"requests      {len(latencies)} in {elapsed:.2f} s -> {len(latencies) / elapsed:.0f} req/s"
          f" (target {'max' if rate <= 0 else f'{rate:.0f}'} req/s)")
    print(f"status codes  {dict(results.statuses)}" + (f"  errors {dict(results.errors)}" if results.errors else ""))
    if latencies:
        print(
            "latency ms    p50 {:.2f}  p90 {:.2f}  p99 {:.2f}  p99.9 {:.2f}  max {:.2f}  mean {:.2f}".format(
                percentile(latencies, 0.50), percentile(latencies, 0.90), percentile(latencies, 0.99),
                percentile(latencies, 0.999), latencies[-1], statistics.fmean(latencies),
            )
        )
    if results.late_sends:
        print(f"generator     {results.late_sends} request(s) sent >1 ms after schedule (generator saturated)")


WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/query", nil,
    '{"question": "wrk RUNID thread ' .. tid .. ' question ' .. n .. ': what is ' .. n .. ' squared?"}')
end
done = function(summary, latency, requests)
  local codes = 0
  io.write(string.format("WRK requests=%d duration_us=%d p50=%.3f p90=%.3f p99=%.3f p999=%.3f max=%.3f mean=%.3f status_errors=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000, latency.mean / 1000,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def run_wrk(url: str, connections: int, seconds: float, threads: int) -> int:
    import shutil
    import tempfile

    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT.replace("RUNID", uuid.uuid4().hex[:8]))
        script.flush()
        argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:.0f}s", "--latency", "-s", script.name, url]
        output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    line = next(l for l in output.splitlines() if l.startswith("WRK "))
    fields = dict(item.split("=") for item in line.split()[1:])
    requests, duration = int(fields["requests"]), int(fields["duration_us"]) / 1e6
    print(f"requests      {requests} in {duration:.2f} s -> {requests / duration:.0f} req/s (closed loop, {connections} connections)")
    print(f"errors        {fields['status_errors']} non-2xx/3xx, {fields['socket_errors']} socket")
    print("latency ms    p50 {p50}  p90 {p90}  p99 {p99}  p99.9 {p999}  max {max}  mean {mean}".format(**fields))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="storage API base URL (default: from qactl settings)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second; 0 = as fast as possible")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration at --rate")
    parser.add_argument("--requests", type=int, help="total requests (default: rate x seconds, or 5000)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--wrk", action="store_true", help="closed-loop load from wrk instead (see above)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--floor", nargs="?", const="trivial", choices=sorted(FLOOR_APPS),
        help="load a floor app under the same server instead: trivial (no work) or essential (the least work "
             "of the 202 path); see above",
    )
    parser.add_argument(
        "--steps", help="with --floor essential: a subset of cache,claim,produce,ack (default: all), to see what "
                        "each step costs",
    )
    parser.add_argument("--pause", type=float, default=10.0, help="with --ladder: seconds of rest between rungs")
    parser.add_argument(
        "--ladder", action="store_true",
        help="the same load on each rung in turn: the trivial app, each essential step alone, all of them, "
             "then the storage API; ends with a table (see above)",
    )
    args = parser.parse_args()
    if args.floor and args.url:
        parser.error("--floor starts its own server: leave out --url")
    if args.steps and args.floor != "essential":
        parser.error("--steps goes with --floor essential")
    if args.ladder and (args.floor or args.wrk):
        parser.error("--ladder runs every floor itself, open loop: leave out --floor and --wrk")
    if not args.ladder:
        measure_on(args, args.floor, args.steps)
        return
    print("## warm-up: a broker's first acknowledged produces after `qactl up` are slow (not in the table)")
    measure_on(args, "essential", "produce,ack")
    rows = []
    for label, floor, steps in LADDER:
        time.sleep(args.pause)  # let the machine settle after the previous rung
        print(f"\n## {label}")
        rows.append((label, measure_on(args, floor, steps)))
    print(f"\n{'rung':<44} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11}")
    for label, figures in rows:
        print(f"{label:<44} {figures.get('p50', float('nan')):>8.2f} {figures.get('p99', float('nan')):>8.2f}"
              f" {figures.get('cpu_ms', float('nan')):>11.3f}")


def measure_on(args: argparse.Namespace, floor_app: str | None, steps: str | None) -> dict[str, float]:
    """Start the floor app if one is asked for, measure it (or the API), stop it."""
    url = args.url
    floor = None
    if floor_app:
        extra = {"QACTL_BENCH_FLOOR_STEPS": steps} if steps else {}
        floor, url = start_floor_app(FLOOR_APPS[floor_app], extra)
    elif url is None:
        from services.common.settings import get_settings

        url = get_settings().api.base_url
    try:
        return measure(args, url)
    finally:
        if floor is not None:
            floor.terminate()
            floor.wait(timeout=10)


def start_floor_app(target: str, environment: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """uvicorn serving a floor app of bench/ on a free port, once it listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "uvicorn", target, "--app-dir", str(Path(__file__).parent),
            "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning"]  # fmt: skip
    server = subprocess.Popen(argv, env={**os.environ, **environment})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the floor app did not start (exit code {server.returncode})")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    server.terminate()
    raise SystemExit("the floor app did not listen within 30 s")


def measure(args: argparse.Namespace, url: str) -> dict[str, float]:
    """Load ``url`` as the arguments say and print what was measured; returns p50, p99, cpu_ms."""
    figures: dict[str, float] = {}
    pid = listening_pid(urlsplit(url).port or 80)
    print(f"machine: {os.cpu_count()} cores, load average {machine_load()} before the run"
          + (f"; API pid {pid}" if pid else "; API pid not found (CPU per request not measured)"))
    cpu_before = cpu_seconds(pid)
    sums_before = server_sums(url)
    if args.wrk:
        print(f"POST {url}/query with wrk, distinct questions, {args.connections} connections, {args.seconds:.0f} s")
        requests = run_wrk(url, args.connections, args.seconds, args.threads)
    else:
        total = args.requests or (int(args.rate * args.seconds) if args.rate > 0 else 5000)
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        print(f"POST {url}/query, {total} distinct questions, {args.connections} keep-alive connections")
        results = runner(run(url, args.rate, total, args.connections, args.warmup))
        report(results, args.rate)
        requests = len(results.latencies_ms) + args.warmup
        latencies = sorted(results.latencies_ms)
        if latencies:
            figures.update(p50=percentile(latencies, 0.50), p99=percentile(latencies, 0.99))
    cpu_after = cpu_seconds(pid)
    if cpu_before is not None and cpu_after is not None and requests:
        figures["cpu_ms"] = (cpu_after - cpu_before) / requests * 1000
        print(f"API CPU       {figures['cpu_ms']:.3f} ms per request (all its threads)")
    sums = {k: v - sums_before[k] for k, v in server_sums(url).items()}
    if sums["request_count"]:
        steps = ", ".join(
            f"{step} {sums[step + '_sum'] / sums[step + '_count'] * 1000:.2f}"
            for step in ("cache", "database", "kafka") if sums[step + "_count"]
        )
        print(f"inside API    {sums['request_sum'] / sums['request_count'] * 1000:.2f} ms mean per accepted question"
              f" (means by step, ms: {steps})")
    collections = ", ".join(
        f"gen{g} {sums[f'gc{g}_count']:.0f} x {sums[f'gc{g}_sum'] / sums[f'gc{g}_count'] * 1000:.2f} ms"
        for g in range(3) if sums[f"gc{g}_count"]
    )
    if collections:
        print(f"API GC        {collections} (collections x mean pause)")
    print(f"machine       load average {machine_load()} after the run")
    return figures


if __name__ == "__main__":
    main()
