"""PNG charts of `qactl metrics` sections (matplotlib, headless): one file per section with data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qactl.reports.sections import Section


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, whatever the environment says
    import matplotlib.pyplot as plt

    return plt


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _latency(section: Section, plt: Any, path: Path) -> None:
    stages = [str(r[0]) for r in section.rows]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.27
    for i, name in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        column = section.columns.index(name)
        # Stages span milliseconds to minutes: a log axis, with empty or zero bars left out.
        values = [max(_number(r[column]) or 0.0, 0.0) or float("nan") for r in section.rows]
        ax.bar([x + (i - 1) * width for x in range(len(stages))], values, width, label=name.removesuffix("_ms"))
    ax.set_xticks(range(len(stages)), stages, rotation=20, ha="right")
    ax.set_ylabel("ms (log scale)")
    ax.set_yscale("log")
    ax.set_title(section.title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _errors(section: Section, plt: Any, path: Path) -> None:
    labels = [f"{r[0]}\n{r[1]} {r[2] if r[2] is not None else ''}".strip() for r in section.rows]
    values = [_number(r[section.columns.index("occurrences")]) or 0.0 for r in section.rows]
    colors = ["tab:orange" if r[0] == "recovered" else "tab:red" for r in section.rows]
    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 1.1), 4.5))
    ax.bar(range(len(labels)), values, color=colors)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("occurrences")
    ax.set_title("errors: recovered (orange) and final (red)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _regeneration(section: Section, plt: Any, path: Path, threshold: float | None) -> None:
    attempts = [int(r[0]) for r in section.rows]
    scores = [_number(r[section.columns.index("avg_score")]) for r in section.rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(attempts, scores, marker="o", label="mean score")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xticks(attempts)
    ax.set_xlabel("attempt (0 = first answer)")
    ax.set_ylabel("BERTScore F1")
    ax.set_title("score per attempt")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _outcomes(section: Section, plt: Any, path: Path) -> None:
    source_col = section.columns.index("source")
    regen_col = section.columns.index("regenerations")
    pct_col = section.columns.index("validated_percent")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for source in sorted({str(r[source_col]) for r in section.rows}):
        rows = sorted((r for r in section.rows if str(r[source_col]) == source), key=lambda r: r[regen_col])
        ax.plot([r[regen_col] for r in rows], [_number(r[pct_col]) for r in rows], marker="o", label=source)
    ax.set_xlabel("regenerations used")
    ax.set_ylabel("validated %")
    ax.set_ylim(0, 100)
    ax.set_title(section.title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _comparison(section: Section, plt: Any, path: Path) -> None:
    rows = {str(r[0]): r[1:] for r in section.rows}
    panels = [
        ("perceived latency p50 (ms)", "perceived latency p50 (ms)", True),
        ("real latency p50 (ms)", "real latency p50 (ms)", False),
        ("throughput (answers/s)", "throughput (answers/s)", False),
        ("success rate %", "success rate (%)", False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 4))
    for ax, (key, title, log) in zip(axes, panels):
        values = [_number(v) for v in rows.get(key, (None, None))]
        names = ["sync", "async"]
        shown = [v if v is not None else 0.0 for v in values]
        ax.bar(names, shown, color=["tab:gray", "tab:blue"])
        for x, v in enumerate(values):
            ax.annotate("not measured" if v is None else f"{v:,.1f}", (x, shown[x]), ha="center", va="bottom", fontsize=8)
        if log and all(v is not None and v > 0 for v in values):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
    fig.suptitle("synchronous design vs asynchronous pipeline (measured)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_charts(sections: list[Section], directory: Path, threshold: float | None = None) -> list[Path]:
    """One PNG per section that has rows to draw; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    written: list[Path] = []
    for section in sections:
        if not section.rows:
            continue
        path = directory / f"{section.name}.png"
        if section.name == "latency":
            _latency(section, plt, path)
        elif section.name == "errors":
            _errors(section, plt, path)
        elif section.name == "regeneration":
            _regeneration(section, plt, path, threshold)
        elif section.name == "regeneration_outcomes":
            _outcomes(section, plt, path)
        elif section.name == "comparison":
            _comparison(section, plt, path)
        else:
            continue
        written.append(path)
    return written
