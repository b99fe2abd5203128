"""Component health for the dashboard: the probes of `qactl status`."""

from __future__ import annotations

from collections.abc import Sequence

from qactl.dashboard.model import ComponentRow, HealthProbe
from services.common.settings import QactlSettings


def health_probe(settings: QactlSettings) -> HealthProbe:
    """The probes of `qactl status`, on one Stack built once (building it imports every part)."""
    stack = None

    def probe() -> Sequence[ComponentRow]:
        nonlocal stack
        from qactl.runtime.stack import Stack

        stack = stack or Stack(settings)
        return [ComponentRow(s.name, s.kind, s.ok, s.health.detail) for s in stack.status()]

    return probe
