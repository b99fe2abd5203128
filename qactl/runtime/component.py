"""What a part of the stack declares so that `qactl up/down/status` can run it.

A component is a named thing with up to four hooks; its processes are ``ProcessSpec``s that the
one ``Supervisor`` runs. Infrastructure (Kafka, Flink, PostgreSQL, Redis) and the pipeline
services plug in the same way: a new service is a new declaration, not a new code path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qactl.runtime.supervisor import Health, ProcessSpec
from services.common.settings import QactlSettings

Report = Callable[[str], None]


def _no_op(report: Report) -> bool:
    return False


@dataclass
class Component:
    """A part of the stack.

    - ``provision``: install or prepare what is missing (downloads, initdb); idempotent.
    - ``processes``: the processes to run (several for replicas; none for an external endpoint
      or a job submitted to a cluster).
    - ``after_start``: idempotent setup once healthy (topics, migrations, job submission);
      returns True when it changed something, so a second `qactl up` can say "nothing changed".
    - ``health``: the component's health with a detail line for `qactl status`.
    - ``before_stop``: called by `qactl down` before the processes stop (e.g. cancel a job).
    """

    name: str
    health: Callable[[], Health]
    processes: Callable[[], Sequence[ProcessSpec]] = lambda: ()
    provision: Callable[[Report], object] = _no_op
    after_start: Callable[[Report], bool] = _no_op
    before_stop: Callable[[Report], object] = _no_op
    external: bool = False
    endpoint: str = ""
    kind: str = "infra"  # "infra", "job" or "service"
    depends_on: Sequence[str] = field(default_factory=tuple)


ComponentFactory = Callable[[QactlSettings], Component]
