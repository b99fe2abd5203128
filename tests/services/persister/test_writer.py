"""Which PostgreSQL errors mean the server is down (wait), and which are about one row (unstorable)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.persister.writer import _server_down


@pytest.mark.parametrize(
    ("pgcode", "down"),
    [
        (None, True),  # libpq's own: refused, reset, timed out
        ("08006", True),  # connection failure
        ("57P01", True),  # admin shutdown
        ("53300", True),  # too many connections
        ("54000", False),  # program limit exceeded: "index row requires 16440 bytes"
        ("22021", False),  # character not in repertoire
    ],
)
def test_only_the_servers_state_is_waited_out(pgcode: str | None, down: bool) -> None:
    assert _server_down(SimpleNamespace(pgcode=pgcode)) is down
