"""`qactl watch` arguments: CliRunner, no terminal app started."""

from __future__ import annotations

from typer.testing import CliRunner

from qactl.cli.main import app

runner = CliRunner()


def test_watch_is_a_command_with_a_refresh_option():
    result = runner.invoke(app, ["watch", "--help"])
    assert result.exit_code == 0
    assert "--refresh" in result.output


def test_a_refresh_out_of_range_is_one_line_and_exit_1():
    result = runner.invoke(app, ["watch", "--refresh", "0"])
    assert result.exit_code == 1
    assert "--refresh must be between" in result.output
    assert "Traceback" not in result.output


def test_a_refresh_that_is_not_a_number_is_a_usage_error():
    result = runner.invoke(app, ["watch", "--refresh", "soon"])
    assert result.exit_code == 2
