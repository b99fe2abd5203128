"""`qactl watch` arguments: CliRunner, no terminal app started."""

from __future__ import annotations

from typer.testing import CliRunner

from qactl.cli.main import app

runner = CliRunner()


def test_watch_is_a_command_with_a_refresh_option():
    result = runner.invoke(app, ["watch", "--help"])
    assert result.exit_code == 0
    assert "--refresh" in result.output


def test_a_refresh_out_of_range_is_a_usage_error_that_names_the_range():
    for refresh, bound in (("0", "greater than or equal to 0.1"), ("3601", "less than or equal to 3600")):
        result = runner.invoke(app, ["watch", "--refresh", refresh])
        assert result.exit_code == 2
        shown = " ".join(result.output.replace("│", " ").split())
        assert "Invalid value for '--refresh'" in shown and bound in shown
        assert "Traceback" not in result.output


def test_a_refresh_that_is_not_a_number_is_a_usage_error():
    result = runner.invoke(app, ["watch", "--refresh", "soon"])
    assert result.exit_code == 2
