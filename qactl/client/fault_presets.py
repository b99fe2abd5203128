"""The operator's fault presets and how a fault rule reads, without the HTTP client.

Apart from ``qactl.client.gateway`` so that the CLI can name the presets in its help without
importing httpx.
"""

from __future__ import annotations

from services.llm_gateway.faults import FaultRule

# Named fault scenarios an operator fires with one word (CLI and dashboard keys).
PRESETS: dict[str, FaultRule] = {
    "503-burst": FaultRule(kind="503", count=3, retry_after=1),
    "503": FaultRule(kind="503", count=1),
    "429": FaultRule(kind="429", count=1, retry_after=1),
    "insufficient_quota": FaultRule(kind="insufficient_quota", count=1),
    "402": FaultRule(kind="402", count=1),
    "timeout": FaultRule(kind="timeout", count=1),
    "hang": FaultRule(kind="hang", rate=1.0),
    "degrade": FaultRule(kind="degrade", count=1),
}


def describe_rule(rule: FaultRule) -> str:
    """'503 for the next 3 calls, Retry-After 1 s, on questions containing "kafka"'."""
    if rule.count is not None:
        scope = f"for the next {rule.count} call{'s' if rule.count != 1 else ''}"
    else:
        scope = f"on {rule.rate:.0%} of calls"
    extras = []
    if rule.retry_after is not None:
        extras.append(f"Retry-After {rule.retry_after:g} s")
    if rule.seconds is not None:
        extras.append(f"stalling {rule.seconds:g} s")
    if rule.match is not None:
        extras.append(f'on questions containing "{rule.match}"')
    return ", ".join([f"{rule.kind} {scope}", *extras])
