"""Which instance a pipeline process is: its slot (-> metrics port) and replica number.

`qactl up` (qactl/runtime/services.py) sets ``QACTL_SERVICE_SLOT`` and ``QACTL_SERVICE_REPLICA``
for every process it starts; each process serves /metrics and /health on
``services.metrics_base_port + slot``.
"""

from __future__ import annotations

import os

from services.common.settings import QactlSettings

SLOT_ENV = "QACTL_SERVICE_SLOT"
REPLICA_ENV = "QACTL_SERVICE_REPLICA"


def service_slot() -> int:
    return int(os.environ.get(SLOT_ENV, "0"))


def service_replica() -> int:
    """1-based replica number (1 when the process is not replicated)."""
    return int(os.environ.get(REPLICA_ENV, "1"))


def metrics_port(settings: QactlSettings, slot: int | None = None) -> int:
    return settings.services.metrics_base_port + (service_slot() if slot is None else slot)
