"""`qactl llm build`: the local model server's binary and model, made ready before `qactl up` needs them."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from qactl.cli.common import console, settings

class BuildProgress:
    """The build's progress lines as the operator reads them: every step, and cmake's
    percentages (one a file compiled) only when they pass a tenth of the build."""

    def __init__(self, say) -> None:
        self.say = say
        self.tenth: int | None = None

    def __call__(self, line: str) -> None:
        step = line.split(" (")[0]
        if step.startswith("building llama-server") and step.endswith("%"):
            tenth = int(step.rstrip("%").split()[-1]) // 10
            if tenth == self.tenth:
                return
            self.tenth = tenth
        self.say(f"  {line}", highlight=False)


app = typer.Typer(name="llm", help="The local model server (llama.cpp's llama-server with a small GGUF model).")


@app.command()
def build(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result.")] = False,
) -> None:
    """Build llama-server (portable CPU flags) and fetch the model into the cache, if missing.

    `qactl up` does the same when it needs them; the install runs this first so that the
    ~5 minutes of the first build are shown there, once per machine. A second run takes a moment.
    """
    from qactl.runtime import llama_build, llm_server

    s = settings(ctx)
    started = time.monotonic()
    report = BuildProgress(console.print if not quiet else lambda *a, **k: None)

    binary = llm_server.binary(s)
    if s.llm_server.binary is None:
        binary = llama_build.ensure_binary(s.cache_dir, report)
    model = llm_server.model_file(s)
    if s.llm_server.model_path is None:
        model = llama_build.ensure_model(s.cache_dir, report=report)
    llama_build.check_gguf(model)
    console.print(f"[green]llm server ready[/] in {time.monotonic() - started:.0f} s: {binary}, model {model}")
