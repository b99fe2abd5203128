"""The faults `qactl chaos` applies, each a real action on the real processes of the stack.

A fault is applied, held for its duration (scaled by the run's time scale), then restored; what
restored it is said in the result ("qactl up", "SIGCONT", "rules cleared", or nobody: after a
kill -9 the stack must come back by itself, else the runner runs `qactl up`).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

from qactl.client.gateway import GatewayClient
from qactl.errors import QactlError
from qactl.runtime.stack import Stack
from qactl.runtime.supervisor import ProcessSpec
from services.llm_gateway.faults import FaultRule


class FaultNotApplicable(QactlError):
    """The experiment needs a part this stack does not run (e.g. the model server with a simulated LLM)."""


@dataclass
class FaultContext:
    """What a fault acts on: the stack, through its supervisor and the gateway's admin API."""

    stack: Stack
    frozen_pids: list[int] = field(default_factory=list)  # what a Freeze must thaw

    @property
    def process_names(self) -> list[str]:
        return [spec.name for comp in self.stack.components for spec in comp.processes()]

    def spec(self, process: str) -> ProcessSpec:
        """The process named ``process``, or its first replica (``llm-consumer`` -> ``llm-consumer-1``)."""
        specs = {spec.name: spec for comp in self.stack.components for spec in comp.processes()}
        for name in (process, f"{process}-1"):
            if name in specs:
                return specs[name]
        raise FaultNotApplicable(f"this stack runs no {process} process")

    def running_pid(self, process: str) -> tuple[str, int]:
        name = self.spec(process).name
        state = self.stack.supervisor.state(name)
        if not state.running or state.pid is None:
            raise QactlError(f"{name} is not running, so it cannot be the fault")
        return name, state.pid

    def gateway(self) -> GatewayClient:
        self.spec("llm-gateway")  # raises FaultNotApplicable when the stack has no gateway
        return GatewayClient.from_settings(self.stack.settings)


class Fault:
    """Base: ``apply`` breaks something, ``restore`` undoes what the operator would undo."""

    seconds: float = 0.0  # how long the fault is held before it is restored (before scaling)

    def check(self, ctx: FaultContext) -> None:
        """Raise ``FaultNotApplicable`` when this stack cannot have this fault."""

    def apply(self, ctx: FaultContext) -> str:
        raise NotImplementedError

    def restore(self, ctx: FaultContext) -> str | None:
        """Undo the fault; returns who restored it, None when the stack must recover by itself."""
        return None


@dataclass
class Kill(Fault):
    """kill -9 of one process (its children stay, as after an OOM kill); nothing restarts it here."""

    process: str
    seconds: float = 0.0

    def check(self, ctx: FaultContext) -> None:
        ctx.spec(self.process)

    def apply(self, ctx: FaultContext) -> str:
        name, pid = ctx.running_pid(self.process)
        os.kill(pid, signal.SIGKILL)
        return f"kill -9 {name} (pid {pid})"


@dataclass
class Stop(Fault):
    """A clean stop of a process for ``seconds``; restored by `qactl up` as a user would."""

    process: str
    seconds: float = 30.0

    def check(self, ctx: FaultContext) -> None:
        ctx.spec(self.process)

    def apply(self, ctx: FaultContext) -> str:
        spec = ctx.spec(self.process)
        ctx.stack.supervisor.stop(spec.name, spec.stop_signal, spec.stop_timeout)
        return f"stopped {spec.name}"

    def restore(self, ctx: FaultContext) -> str:
        ctx.stack.up()
        return "qactl up"


@dataclass
class Freeze(Fault):
    """SIGSTOP: the process keeps its sockets open and answers nothing (hung, not down)."""

    process: str
    seconds: float = 30.0

    def check(self, ctx: FaultContext) -> None:
        ctx.spec(self.process)

    def apply(self, ctx: FaultContext) -> str:
        name, pid = ctx.running_pid(self.process)
        os.kill(pid, signal.SIGSTOP)
        ctx.frozen_pids.append(pid)
        return f"SIGSTOP {name} (pid {pid})"

    def restore(self, ctx: FaultContext) -> str:
        while ctx.frozen_pids:
            try:
                os.kill(ctx.frozen_pids.pop(), signal.SIGCONT)
            except ProcessLookupError:
                pass
        return "SIGCONT"


@dataclass
class GatewayRule(Fault):
    """A fault rule on the LLM gateway for ``seconds`` (every call it matches), then cleared."""

    rule: FaultRule
    seconds: float = 60.0

    def check(self, ctx: FaultContext) -> None:
        ctx.spec("llm-gateway")

    def apply(self, ctx: FaultContext) -> str:
        with ctx.gateway() as gateway:
            gateway.add_rule(self.rule)
        extra = f", Retry-After {self.rule.retry_after:g} s" if self.rule.retry_after is not None else ""
        return f"gateway: {self.rule.kind} on every call{extra}"

    def restore(self, ctx: FaultContext) -> str:
        with ctx.gateway() as gateway:
            gateway.clear_faults()
        return "gateway rules cleared"


@dataclass
class DownUp(Fault):
    """`qactl down`, a pause of ``seconds``, then `qactl up`."""

    seconds: float = 5.0

    def apply(self, ctx: FaultContext) -> str:
        stopped = ctx.stack.down()
        return f"qactl down ({len(stopped)} processes stopped)"

    def restore(self, ctx: FaultContext) -> str:
        ctx.stack.up()
        return "qactl up"
