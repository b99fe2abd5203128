"""CPU use of `qactl watch` at its default 1 s refresh.

The dashboard runs as a child process in a pseudo-terminal of the chosen size (so Textual draws
and writes every frame as it would on a real terminal); the parent drains the output, and reads
the child's CPU time (user + system, all threads) from /proc at the start and the end of the
measured window, after a warm-up.

    python bench/bench_watch.py                       # recorded data, 120x40, 30 s
    python bench/bench_watch.py --source stack        # the stack of the current settings
    QACTL_KAFKA__PORT=27092 ... python bench/bench_watch.py --source stack

Prints the figure; asserts nothing.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import struct
import sys
import termios
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


class RollingRecordedSource:
    """Recorded data that moves: the clock, the rates and the question ages change every poll,
    so each refresh redraws as much as a live pipeline would make it."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.qactl.tui.recorded import RecordedSource

        self._recorded = RecordedSource()
        self._polls = 0

    def snapshot(self):  # type: ignore[no-untyped-def]
        base = self._recorded.snapshot()
        self._polls += 1
        shift = self._polls % 20
        topics = tuple(
            replace(t, history=t.history[shift:] + t.history[:shift], end_offset=t.end_offset + self._polls)
            for t in base.topics
        )
        return replace(base, taken_at=base.taken_at + timedelta(seconds=self._polls), topics=topics)

    def journey(self, question_id: str):  # type: ignore[no-untyped-def]
        return self._recorded.journey(question_id)

    def close(self) -> None:
        return None


def run_child(source_kind: str, refresh: float) -> None:
    from qactl.tui.app import make_app
    from services.common.settings import get_settings

    settings = get_settings()
    source = RollingRecordedSource() if source_kind == "recorded" else None
    make_app(settings, source, refresh_seconds=refresh).run()  # type: ignore[arg-type]


def measure(source_kind: str, refresh: float, seconds: float, warmup: float, size: tuple[int, int]) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(
            sys.executable,
            [sys.executable, __file__, "--child", "--source", source_kind, "--refresh", str(refresh)],
        )
    cols, rows = size
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    written = 0
    seen_frame = False

    def drain(until: float, first_frame: bool = False) -> None:
        nonlocal written, seen_frame
        while time.monotonic() < until and not (first_frame and seen_frame):
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    return
                written += len(data)
                seen_frame = seen_frame or b"poll" in data  # the status line of a polled frame

    started = time.monotonic()
    drain(started + 120, first_frame=True)
    startup = time.monotonic() - started
    drain(time.monotonic() + warmup)
    cpu0, wall0, bytes0 = cpu_seconds(pid), time.monotonic(), written
    drain(wall0 + seconds)
    cpu1, wall1, bytes1 = cpu_seconds(pid), time.monotonic(), written
    os.write(fd, b"q")
    drain(time.monotonic() + 3)
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
    cpu, wall = cpu1 - cpu0, wall1 - wall0
    print(
        f"qactl watch, {source_kind} data, refresh {refresh:g} s, {cols}x{rows}: "
        f"{100 * cpu / wall:.1f} % of one core ({cpu:.2f} s CPU in {wall:.1f} s), "
        f"{(bytes1 - bytes0) / wall / 1024:.1f} KiB/s to the terminal; "
        f"excluded: startup to the first polled frame ({startup:.1f} s) and {warmup:g} s warm-up"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("recorded", "stack"), default="recorded")
    parser.add_argument("--refresh", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--size", default="120x40", help="COLSxROWS of the pseudo-terminal")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.source, args.refresh)
        return
    cols, rows = (int(v) for v in args.size.lower().split("x"))
    measure(args.source, args.refresh, args.seconds, args.warmup, (cols, rows))


if __name__ == "__main__":
    main()
