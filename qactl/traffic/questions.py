"""Questions for a traffic run: from a file (text, JSON, JSON lines or YAML) or the knowledge base.

Accepted files:

- text (any other extension): one question per line; blank lines and ``#`` comments skipped;
- ``.json``: an array of questions, each a string or ``{"question": ..., "reference_answer": ...}``
  (``reference`` accepted), or an object with such an array under ``questions`` (or ``entries``);
- ``.jsonl`` / ``.ndjson``: one such string or object per line;
- ``.yaml`` / ``.yml``: the same shapes as JSON; the knowledge base file itself is one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qactl.errors import ConfigError
from services.common.knowledge_base import default_knowledge_base


@dataclass(frozen=True)
class TrafficQuestion:
    question: str
    reference_answer: str | None = None


def _item(value: Any, where: str) -> TrafficQuestion:
    if isinstance(value, str):
        question, reference = value, None
    elif isinstance(value, dict):
        question = value.get("question")
        reference = value.get("reference_answer", value.get("reference"))
        if reference is not None and not isinstance(reference, str):
            raise ConfigError(f"{where}: reference_answer must be text")
    else:
        raise ConfigError(f"{where}: expected a question (text) or an object with a question, got {type(value).__name__}")
    if not isinstance(question, str) or not question.strip():
        raise ConfigError(f"{where}: empty or missing question")
    return TrafficQuestion(question.strip(), reference.strip() if isinstance(reference, str) and reference.strip() else None)


def _items(data: Any, source: str) -> list[TrafficQuestion]:
    if isinstance(data, dict):
        for key in ("questions", "entries"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            raise ConfigError(f"{source}: expected a list of questions (or one under 'questions')")
    if not isinstance(data, list):
        raise ConfigError(f"{source}: expected a list of questions")
    return [_item(value, f"{source}, item {i}") for i, value in enumerate(data, start=1)]


def load_questions(path: Path) -> list[TrafficQuestion]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"questions file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read questions file {path}: {exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            found = _items(json.loads(text), str(path))
        elif suffix in (".jsonl", ".ndjson"):
            found = [
                _item(json.loads(line), f"{path}, line {n}")
                for n, line in enumerate(text.splitlines(), start=1)
                if line.strip()
            ]
        elif suffix in (".yaml", ".yml"):
            found = _items(yaml.safe_load(text), str(path))
        else:
            found = [
                TrafficQuestion(line.strip())
                for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not found:
        raise ConfigError(f"questions file {path} has no questions")
    return found


def knowledge_base_questions() -> list[TrafficQuestion]:
    """The default: every question of the knowledge base, with its reference answer."""
    return [TrafficQuestion(e.question, e.reference_answer) for e in default_knowledge_base().entries]


def take(questions: list[TrafficQuestion], count: int | None) -> list[TrafficQuestion]:
    """``count`` questions, cycling through the list when it is shorter (default: the list once)."""
    if count is None:
        return list(questions)
    return [questions[i % len(questions)] for i in range(count)]


def tagged(questions: list[TrafficQuestion], tag: str) -> list[TrafficQuestion]:
    """Make every question unique to this run, so none is answered from the store."""
    return [TrafficQuestion(f"{q.question} ({tag}-{i})", q.reference_answer) for i, q in enumerate(questions, start=1)]


def digest(questions: list[TrafficQuestion]) -> str:
    """Identifies a question set, so that runs on the same questions can be compared."""
    h = hashlib.sha256()
    for q in questions:
        h.update(q.question.encode("utf-8") + b"\x1f" + (q.reference_answer or "").encode("utf-8") + b"\x1e")
    return h.hexdigest()[:16]
