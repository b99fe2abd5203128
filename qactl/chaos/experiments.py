"""Every experiment of `qactl chaos`, one row each: name, what it does, the fault (with how it is
restored and how long it is held). Data, not code: a new experiment is a new row."""

from __future__ import annotations

from dataclasses import dataclass

from qactl.chaos.faults import DownUp, Fault, Freeze, GatewayRule, Kill, Stop
from qactl.errors import ConfigError
from services.common.kafka import MAX_POLL_INTERVAL_MS
from services.llm_gateway.faults import FaultRule

# Beyond it a consumer that did not poll is out of its group: PostgreSQL down this long makes
# the persister miss it.
PAST_MAX_POLL_SECONDS = MAX_POLL_INTERVAL_MS / 1000 + 30


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    fault: Fault
    ci: bool = False  # in the subset the test suite runs on every CI run
    # A gateway rule during the traffic until the fault is restored, so that work flows through
    # the part the fault hits (a retry service sees nothing while the LLM answers every call).
    background: FaultRule | None = None

    def hold_seconds(self, time_scale: float) -> float:
        """How long the fault is held before it is restored, at this run's time scale."""
        return self.fault.seconds * time_scale if self.fault.seconds else 0.0

    @property
    def restored_by(self) -> str:
        """How the fault ends, as `qactl chaos list` says it."""
        return {
            Kill: "supervisor, else qactl up",
            Stop: "qactl up",
            Freeze: "SIGCONT",
            GatewayRule: "gateway rules cleared",
            DownUp: "qactl up",
        }[type(self.fault)]


def _kill(process: str, what: str, ci: bool = False, background: FaultRule | None = None) -> Experiment:
    return Experiment(f"kill-{process}", f"kill -9 {what} with questions in flight", Kill(process), ci=ci, background=background)


EXPERIMENTS: tuple[Experiment, ...] = (
    _kill("kafka", "the Kafka broker"),
    _kill("flink-jobmanager", "the Flink JobManager (the score job with it)"),
    _kill("flink-taskmanager", "the Flink TaskManager (its Python worker is left to its fate)"),
    _kill("storage-api", "the storage API"),
    _kill("llm-consumer", "one llm-consumer replica", ci=True),
    _kill("retry-overload", "the overload retry service (a third of the LLM calls answered 503)", background=FaultRule(kind="503", rate=0.33)),
    _kill("retry-quota", "the quota retry service (a third of the LLM calls answered 402)", background=FaultRule(kind="402", rate=0.33)),
    _kill("persister", "the persister", ci=True),
    _kill("llm-gateway", "the LLM gateway"),
    _kill("llm-server", "the local model server (only when the stack runs it)"),
    Experiment("postgres-stop", "PostgreSQL stopped for 30 s", Stop("postgres", 30.0)),
    Experiment(
        "postgres-stop-long",
        f"PostgreSQL stopped for {PAST_MAX_POLL_SECONDS:.0f} s, past the consumers' max poll interval",
        Stop("postgres", PAST_MAX_POLL_SECONDS),
    ),
    Experiment("redis-stop", "Redis stopped for 30 s", Stop("redis", 30.0)),
    Experiment("redis-hang", "Redis hung (SIGSTOP) for 30 s", Freeze("redis", 30.0)),
    Experiment("llm-hang", "the LLM hung for 30 s: calls accepted, never answered", GatewayRule(FaultRule(kind="hang", rate=1.0), 30.0)),
    Experiment("llm-503", "the LLM answering 503 to every call for 60 s", GatewayRule(FaultRule(kind="503", rate=1.0), 60.0), ci=True),
    Experiment(
        "retry-after-hour",
        "the LLM answering 503 with Retry-After 3600 s for 10 s",
        GatewayRule(FaultRule(kind="503", rate=1.0, retry_after=3600), 10.0),
    ),
    Experiment(
        "retry-after-huge",
        "the LLM answering 503 with Retry-After 1e12 s for 10 s",
        GatewayRule(FaultRule(kind="503", rate=1.0, retry_after=1e12), 10.0),
    ),
    Experiment("down-up", "qactl down, 5 s, then qactl up, with questions in flight", DownUp(5.0)),
)

BY_NAME = {e.name: e for e in EXPERIMENTS}


def select(names: list[str]) -> list[Experiment]:
    """The experiments named (``all``: every one), in the order given; unknown names refused."""
    if not names:
        raise ConfigError("name at least one experiment, or all (see `qactl chaos list`)")
    chosen: list[Experiment] = []
    for name in names:
        if name == "all":
            chosen.extend(e for e in EXPERIMENTS if e not in chosen)
            continue
        if name not in BY_NAME:
            raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(BY_NAME)}, all")
        if BY_NAME[name] not in chosen:
            chosen.append(BY_NAME[name])
    return chosen
