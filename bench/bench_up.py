"""Time to all-healthy of the infrastructure (cold and warm) and its idle memory.

    python bench/bench_up.py [--port-base 27500] [--warm-runs 2] [--idle-seconds 15] [--keep]

- cold: a fresh state dir (initdb, KRaft format, topic creation, migrations); the jar caches
  are whatever is there, and the report says whether Maven had to resolve jars.
- warm: `down` then `up` again on the existing state (what a second working day looks like).
- idle RSS: resident memory summed over each process group (PostgreSQL's backends, Flink's
  JVM) after ``--idle-seconds`` of quiet, from /proc.

Runs through the same `Stack` as `qactl up`; ports are ``port_base + offset`` as in the tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qactl.runtime import flink, kafka, maven  # noqa: E402
from qactl.runtime.stack import Stack  # noqa: E402
from qactl.runtime.supervisor import Supervisor  # noqa: E402
from services.common.settings import QactlSettings  # noqa: E402
from tests.stack import INFRA, test_settings  # noqa: E402


def jars_cached(settings: QactlSettings) -> dict[str, bool]:
    return {
        "kafka": maven.is_complete(
            kafka.libs_dir(settings), maven.asset("kafka", "pom.xml"), {"kafka.version": settings.kafka.version}
        ),
        "flink connector": maven.is_complete(
            flink.connectors_dir(settings),
            maven.asset("flink", "pom.xml"),
            {"flink.connector.kafka.version": settings.flink.connector_version},
        ),
    }


def timed_up(stack: Stack) -> tuple[float, dict[str, float]]:
    """Seconds to all-healthy, and when each component became ready (from the start)."""
    start = time.monotonic()
    ready: dict[str, float] = {}

    def events(component: str, phase: str, detail: str) -> None:
        if phase in ("ready", "unchanged", "external"):
            ready[component] = time.monotonic() - start

    stack.up(events)
    return time.monotonic() - start, ready


def group_rss_kib(pgid: int) -> int:
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of a process group so far, including children it waited for (Flink's script JVMs)."""
    ticks = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        except (OSError, ValueError, IndexError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def per_process(stack: Stack, settings: QactlSettings, measure) -> dict[str, float]:
    supervisor = Supervisor(settings)
    found = {}
    for component in stack.components:
        for spec in component.processes():
            pid = supervisor.state(spec.name).pid
            if pid is not None:
                found[spec.name] = measure(pid)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-base", type=int, default=27500)
    parser.add_argument("--warm-runs", type=int, default=2)
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument("--keep", action="store_true", help="leave the stack up (and its state) at the end")
    parser.add_argument(
        "--fresh-cache", action="store_true",
        help="an empty qactl jar cache, so Maven copies the jars again (from ~/.m2, or Maven Central if absent)",
    )  # fmt: skip
    args = parser.parse_args()

    overrides: dict[str, str] = {"state_dir": f"/tmp/qactl-bench-{args.port_base}"}
    if args.fresh_cache:
        overrides["cache_dir"] = f"/tmp/qactl-bench-cache-{args.port_base}"
        shutil.rmtree(overrides["cache_dir"], ignore_errors=True)
    settings = test_settings(args.port_base, **overrides)
    stack = Stack(settings, only=INFRA)
    stack.down()
    shutil.rmtree(settings.state_dir, ignore_errors=True)

    cached = jars_cached(settings)
    print(f"state dir {settings.state_dir}, cache {settings.cache_dir}")
    print("jars already in the cache: " + ", ".join(f"{k} {'yes' if v else 'no (Maven resolves them)'}" for k, v in cached.items()))

    cold, cold_ready = timed_up(stack)
    print(f"cold up: {cold:6.1f} s to all-healthy   " + "  ".join(f"{k} {v:.1f}" for k, v in cold_ready.items()))

    warm_times = []
    for run in range(1, args.warm_runs + 1):
        start = time.monotonic()
        stack.down()
        down_seconds = time.monotonic() - start
        warm, warm_ready = timed_up(stack)
        warm_times.append(warm)
        cpu = per_process(stack, settings, group_cpu_seconds)
        print(
            f"warm up #{run}: {warm:6.1f} s to all-healthy (down took {down_seconds:.1f} s)   "
            + "  ".join(f"{k} {v:.1f}" for k, v in warm_ready.items())
        )
        print("  CPU seconds spent starting: " + "  ".join(f"{k} {v:.1f}" for k, v in cpu.items())
              + f"  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")

    time.sleep(args.idle_seconds)
    rss = per_process(stack, settings, group_rss_kib)
    print(f"idle resident memory after {args.idle_seconds:.0f} s (process group sums):")
    for name, kib in rss.items():
        print(f"  {name:<20} {kib / 1024:8.0f} MiB")
    print(f"  {'total':<20} {sum(rss.values()) / 1024:8.0f} MiB")

    if not args.keep:
        stack.down(purge=True)
        if args.fresh_cache:
            shutil.rmtree(settings.cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
