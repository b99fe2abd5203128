"""Demo cases as data: ``demo_scenarios/cases/<name>.yaml``, parsed and validated here.

A case is a list of *asks*. Each ask submits one question (from the knowledge base, whose
reference answer is used when the case gives none, or any question with its own reference),
after injecting its faults through the gateway's admin API, and states what must happen: the
HTTP answer (accepted 202 or answered 200 at once), the path of hops through the stages and
topics, the terminal state, and optionally the number of LLM calls and whether Kafka saw any
traffic. A new case is a new YAML file; no code.

A path step is written ``"<stage> @ <topic>"`` (``"generating @ questions-pending"``), or as a
mapping that adds checks on that hop::

    {hop: "retrying-overload @ retry-overload-delay-0", delay: policy}   # delay >= the policy's
    {hop: "regenerating @ questions-pending", score: below}              # score <= threshold
    {hop: "validated @ validated-responses", score: above, attempt: 1}
    {hop: "retrying-overload @ llm-responses-error-overload", error: "503"}

The path is written for the simulator, whose unforced answers are paraphrases of the reference
and validate. With a real model only what the faults force is certain: the path is checked
exactly up to the scoring hop of the first answer the model writes itself (after the answers
degrade faults write), and from there the hops must follow the gate's rules, whatever it decides
(``qactl/demo/paths.py``).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qactl.errors import ConfigError
from services.common.knowledge_base import REPO_ROOT, default_knowledge_base
from services.common.schemas import Stage

CASES_DIR = REPO_ROOT / "demo_scenarios" / "cases"
# The four cases of the original plan plus quota, in the order `qactl demo all` runs them;
# any other case file runs after them, alphabetically.
CASE_ORDER = ("normal", "overload", "quota", "regeneration", "cache-hit")

FaultKind = Literal["503", "429", "402", "insufficient_quota", "timeout", "degrade"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fault(_Strict):
    """A gateway fault rule (services/llm_gateway/faults.py); ``match`` defaults to the question."""

    kind: FaultKind
    count: int | None = Field(default=None, ge=1)
    rate: float | None = Field(default=None, gt=0, le=1)
    match: str | None = None
    retry_after: float | None = Field(default=None, ge=0)
    seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _count_or_rate(self) -> "Fault":
        if (self.count is None) == (self.rate is None):
            raise ValueError("give exactly one of count or rate")
        return self

    def rule(self, question: str) -> dict[str, object]:
        """The JSON body of the admin API for this fault, aimed at ``question`` by default."""
        body = self.model_dump(exclude_none=True)
        body.setdefault("match", question)
        return body


class PathStep(_Strict):
    """One expected hop: its stage and topic, and optional checks on it."""

    stage: Stage
    topic: str | None = None
    attempt: int | None = Field(default=None, ge=0)
    score: Literal["above", "below"] | None = None
    delay: Literal["policy"] | None = None
    error: str | None = Field(default=None, description="Error kind or HTTP status, e.g. 503 or quota.")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: object) -> object:
        if isinstance(value, str):
            return _parse_hop(value)
        if isinstance(value, dict) and "hop" in value:
            rest = {k: v for k, v in value.items() if k != "hop"}
            return {**_parse_hop(str(value["hop"])), **rest}
        return value

    @property
    def label(self) -> str:
        return f"{self.stage.value} @ {self.topic}" if self.topic else self.stage.value


def _parse_hop(text: str) -> dict[str, str]:
    stage, _, topic = text.partition("@")
    parsed = {"stage": stage.strip()}
    if topic.strip():
        parsed["topic"] = topic.strip()
    return parsed


class Expectation(_Strict):
    response: Literal["accepted", "answered"] = Field(
        default="accepted", description="accepted: 202, the pipeline runs; answered: 200 at once."
    )
    source: Literal["cache", "database"] | None = Field(default=None, description="For answered: where from.")
    terminal: Literal["validated", "low_quality", "failed"]
    path: list[PathStep] = Field(default_factory=list)
    llm_calls: int | None = Field(default=None, ge=0, description="Gateway calls for this question.")
    kafka_traffic: Literal["none"] | None = Field(
        default=None, description="none: questions-pending end offsets do not move during the ask."
    )
    reason_contains: str | None = Field(default=None, description="For failed: text of the stored reason.")

    @model_validator(mode="after")
    def _coherent(self) -> "Expectation":
        if self.response == "answered" and self.path:
            raise ValueError("an answer given at once (200) has no path; leave path out")
        if self.response == "accepted" and not self.path:
            raise ValueError("an accepted question needs its expected path")
        if self.path and self.path[-1].stage.value != self.terminal:
            raise ValueError(f"the path ends in {self.path[-1].stage.value}, not in terminal {self.terminal}")
        return self


class Ask(_Strict):
    question: str = Field(min_length=1)
    reference_answer: str | None = Field(default=None, description="Default: the knowledge base's.")
    faults: list[Fault] = Field(default_factory=list)
    timeout_seconds: float = Field(default=120.0, gt=0, description="On top of the policy delays expected.")
    expect: Expectation

    @property
    def forced_answers(self) -> int:
        """How many of this question's answers degrade faults write (the first ones), not the LLM.

        A degrade fault with a rate forces an unknown number: it counts for none, and those
        answers are judged like the model's (the gate's rules hold whoever wrote the text).
        """
        return sum(f.count or 0 for f in self.faults if f.kind == "degrade")

    @cached_property
    def reference(self) -> str | None:
        if self.reference_answer is not None:
            return self.reference_answer
        entry = default_knowledge_base().lookup(self.question)
        return entry.reference_answer if entry is not None else None


class DelayProfile(_Strict):
    """What delays the case is written for.

    ``demo``: the case waits on policy delays long enough that it is meant for a stack started
    with the demo profile (``policies.delay_scale`` < 1); with full delays it still runs, and says
    how long it will wait. ``any``: short enough either way.
    """

    profile: Literal["demo", "any"] = "any"
    note: str | None = None


class Case(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    summary: str = ""
    delays: DelayProfile = DelayProfile()
    unique: bool = Field(
        default=True,
        description=(
            "Tag the questions with this run's id (\"What is Redis? (demo normal 1a2b3c)\") so the whole "
            "path runs again instead of an earlier answer coming from the store; asks of one run share it. "
            "The built-in gateway answers a question that starts with a known one as that one."
        ),
    )
    asks: list[Ask] = Field(min_length=1)

    @field_validator("asks")
    @classmethod
    def _references(cls, asks: list[Ask]) -> list[Ask]:
        for ask in asks:
            if ask.reference is None:
                raise ValueError(
                    f"{ask.question!r} is not in the knowledge base: give its reference_answer"
                )
        return asks

    @property
    def questions(self) -> list[str]:
        """The case's distinct questions, in order."""
        return list(dict.fromkeys(ask.question for ask in self.asks))

    @property
    def has_faults(self) -> bool:
        return any(ask.faults for ask in self.asks)


def case_names(directory: Path = CASES_DIR) -> list[str]:
    found = sorted(p.stem for p in directory.glob("*.yaml"))
    known = [n for n in CASE_ORDER if n in found]
    return known + [n for n in found if n not in CASE_ORDER]


def load_case(name_or_path: str | Path, directory: Path = CASES_DIR) -> Case:
    """A case by name (``overload``) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        available = ", ".join(case_names(directory)) or "none"
        raise ConfigError(f"no demo case {str(name_or_path)!r} (cases: {available}; files in {directory})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Case.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"demo case {path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'case'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise ConfigError(f"demo case {path} is invalid: {problems}") from exc


def load_cases(names: list[str], directory: Path = CASES_DIR) -> list[Case]:
    """``all`` expands to every case file, the plan's cases first."""
    wanted: list[str] = []
    for name in names:
        wanted.extend(case_names(directory) if name == "all" else [name])
    return [load_case(n, directory) for n in dict.fromkeys(wanted)]
