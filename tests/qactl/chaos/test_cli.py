"""`qactl chaos` through the CLI: the list, and the arguments it refuses before touching a stack."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qactl.chaos.experiments import EXPERIMENTS, select
from qactl.cli.main import app
from qactl.errors import ConfigError
from tests.qactl.cli.cli_env import flat

runner = CliRunner()

# The issue's experiments, each a row of the table.
REQUIRED = {
    "kill-kafka", "kill-flink-jobmanager", "kill-flink-taskmanager", "kill-storage-api", "kill-llm-consumer",
    "kill-retry-overload", "kill-retry-quota", "kill-persister", "kill-llm-gateway", "kill-llm-server",
    "postgres-stop", "postgres-stop-long", "redis-stop", "redis-hang", "llm-hang", "llm-503",
    "retry-after-hour", "retry-after-huge", "down-up",
}  # fmt: skip


def test_list_names_every_experiment_with_its_fault_and_restoration() -> None:
    result = runner.invoke(app, ["chaos", "list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    for e in EXPERIMENTS:
        assert e.name in out and e.description in out
    assert "SIGCONT" in out and "qactl up" in out and "gateway rules cleared" in out


def test_every_experiment_of_the_issue_is_declared_once() -> None:
    names = [e.name for e in EXPERIMENTS]
    assert len(names) == len(set(names))
    assert REQUIRED <= set(names)
    assert {e.name for e in EXPERIMENTS if e.ci} == {"kill-persister", "kill-llm-consumer", "llm-503"}


def test_postgres_long_outlasts_the_consumers_max_poll_interval() -> None:
    from services.common.kafka import MAX_POLL_INTERVAL_MS

    long = next(e for e in EXPERIMENTS if e.name == "postgres-stop-long")
    assert long.hold_seconds(1.0) > MAX_POLL_INTERVAL_MS / 1000
    assert long.hold_seconds(0.1) == pytest.approx(long.fault.seconds * 0.1)


def test_selection_keeps_the_order_given_and_all_expands() -> None:
    assert [e.name for e in select(["llm-503", "kill-persister", "llm-503"])] == ["llm-503", "kill-persister"]
    assert [e.name for e in select(["all"])] == [e.name for e in EXPERIMENTS]
    with pytest.raises(ConfigError, match="unknown experiment 'kill-everything'"):
        select(["kill-everything"])


def test_run_refuses_bad_arguments_in_one_line() -> None:
    unknown = runner.invoke(app, ["chaos", "run", "kill-everything"])
    assert unknown.exit_code == 1
    assert "unknown experiment 'kill-everything'" in flat(unknown.output) and "Traceback" not in unknown.output
    assert runner.invoke(app, ["chaos", "run"]).exit_code == 2  # no experiment named
    assert runner.invoke(app, ["chaos", "run", "llm-503", "--questions", "0"]).exit_code == 2
    assert runner.invoke(app, ["chaos", "run", "llm-503", "--rate", "0"]).exit_code == 2


def test_run_against_no_stack_says_so_and_starts_nothing() -> None:
    # Ports where nothing listens (the state dir is the test's own): the run reads the stack's
    # health first, and refuses; it is not `qactl up`.
    env = {"QACTL_API__PORT": "1", "QACTL_POSTGRES__PORT": "1", "QACTL_KAFKA__PORT": "1", "QACTL_LLM__BACKEND": "simulated",
           "QACTL_GATEWAY__PORT": "2", "QACTL_SERVICES__METRICS_BASE_PORT": "3", "QACTL_REDIS__PORT": "4",
           "QACTL_FLINK__REST_PORT": "5"}  # fmt: skip
    result = runner.invoke(app, ["chaos", "run", "kill-persister", "-n", "3"], env=env)
    assert result.exit_code == 1
    out = flat(result.output)
    assert "Traceback" not in out and "error: the stack is not healthy" in out and "`qactl up` first" in out
