"""Operator actions the dashboard can trigger: what the TUI is given to fire demos and faults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class DemoFirer(Protocol):
    def fire(self, case: str) -> str:
        """Run one demo case (or "all") to its end; a one-line outcome for a notification."""
        ...


class FaultInjector(Protocol):
    def inject(self, fault: str) -> str:
        """Inject "503-burst", "429", "402" or "degrade" into the LLM gateway."""
        ...

    def clear(self) -> str: ...


@dataclass
class Actions:
    demo: DemoFirer | None = None
    faults: FaultInjector | None = None
