"""`qactl llm build`'s progress: every step, and a line per tenth of the compile."""

from __future__ import annotations

from qactl.cli.llm import BuildProgress


def test_build_progress_prints_steps_and_every_tenth_of_the_compile() -> None:
    printed: list[str] = []
    progress = BuildProgress(lambda text, **_: printed.append(text.strip()))
    progress("downloading the llama.cpp source (77 MB)")
    for percent in range(0, 101):
        progress(f"building llama-server {percent:3d}% ({percent} s; about 5 min on 2 cores)")
    progress("built llama-server in 300 s: /cache/llama-server")
    compile_lines = [line for line in printed if line.startswith("building")]
    assert [line.split("%")[0].split()[-1] for line in compile_lines] == [str(p) for p in range(0, 101, 10)]
    assert printed[0].startswith("downloading") and printed[-1].startswith("built llama-server")
