"""The monitoring profile against a real stack: every metric the dashboard and the rules use is
one the services export, and Debian's Prometheus evaluates every expression with those files.

The official images cannot be pulled here, so the stack is the native one (simulated LLM; no
Flink needed: the services' /metrics are the subject) and Prometheus is Debian's package, run
with compose/monitoring/'s rules and its scrape jobs pointed at the native ports.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from qactl.client.api import StorageApiClient
from qactl.runtime.services import first_slots
from services.common.settings import QactlSettings
from services.common.waiting import poll_until
from tests.compose.test_compose_files import MONITORING, metric_names, promql_expressions
from tests.stack import running, test_settings

pytestmark = pytest.mark.stack

BASE = 29000
COMPONENTS = ("kafka", "postgres", "redis", "llm-gateway", "storage-api", "persister", "retry-overload",
              "retry-quota", "llm-consumer")  # fmt: skip
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "summary": ("_sum", "_count", "")}


@pytest.fixture(scope="module")
def stack() -> Iterator[QactlSettings]:
    settings = test_settings(base=BASE, llm={"backend": "simulated"}, policies={"delay_scale": 0.02})
    with running(settings, COMPONENTS):
        yield settings


def scrape_targets(settings: QactlSettings) -> dict[str, list[str]]:
    """compose/monitoring/prometheus.yml's jobs, at the native stack's ports (no model server here)."""
    metrics = settings.services.metrics_base_port
    slot = first_slots()  # the runtime's own metrics slots, a block per service
    consumers = range(settings.services.llm_consumer_replicas)
    return {
        "storage-api": [f"127.0.0.1:{settings.api.port}"],
        "llm-gateway": [f"127.0.0.1:{settings.gateway.port}"],
        "persister": [f"127.0.0.1:{metrics + slot['persister']}"],
        "retry": [f"127.0.0.1:{metrics + slot[name]}" for name in ("retry-overload", "retry-quota")],
        "llm-consumer": [f"127.0.0.1:{metrics + slot['llm-consumer'] + n}" for n in consumers],
    }


def exported_names(settings: QactlSettings) -> set[str]:
    """Every series name the services' /metrics declare (a labelled family with no sample yet included)."""
    names: set[str] = set()
    for targets in scrape_targets(settings).values():
        for target in targets:
            text = httpx.get(f"http://{target}/metrics", timeout=5).text
            for family in text_string_to_metric_families(text):
                names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
                names |= {sample.name for sample in family.samples}
    return names


def test_every_metric_of_the_dashboard_and_the_rules_is_exported(stack: QactlSettings) -> None:
    with StorageApiClient(stack.api.base_url) as api:  # some traffic: the consumers' statistics flow
        api.submit(f"What is Apache Kafka? [{uuid.uuid4().hex[:8]}]", None)
    time.sleep(6)  # one librdkafka statistics interval
    exported = exported_names(stack)
    missing = sorted(metric_names() - exported)
    assert not missing, f"used by compose/monitoring/ but exported by no service: {missing}"


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus package is not installed")
def test_debians_prometheus_scrapes_the_stack_and_evaluates_every_expression(stack: QactlSettings, tmp_path: Path) -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    rules = tmp_path / "rules.yml"
    shutil.copy(MONITORING / "rules.yml", rules)
    config["rule_files"] = [str(rules)]
    targets = scrape_targets(stack)
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": targets[job["job_name"]]}]}
        for job in config["scrape_configs"]
        if job["job_name"] in targets
    ]
    assert len(config["scrape_configs"]) == len(targets)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{BASE + 90}"
    log = open(tmp_path / "prometheus.log", "wb")
    server = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address={address}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        api = f"http://{address}/api/v1"

        def all_up() -> list[str]:
            try:
                active = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
            except (httpx.HTTPError, ValueError, KeyError):
                return ["prometheus not answering"]
            down = [f"{t['labels']['job']} {t['scrapeUrl']}: {t['health']} {t['lastError']}" for t in active if t["health"] != "up"]
            return down if len(active) == sum(len(t) for t in targets.values()) else ["targets not all listed"]

        assert poll_until(all_up, timeout=120, interval=2, done=lambda down: not down) == []
        groups = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        assert all(rule["health"] != "err" for g in groups for rule in g["rules"]), groups
        for expr in promql_expressions():
            answer = httpx.get(f"{api}/query", params={"query": expr.replace("$__range", "5m")}, timeout=10).json()
            assert answer["status"] == "success", (expr, answer)
        # The exported gauges arrive: consumed throughput by topic has a series per topic consumed.
        consumed = httpx.get(
            f"{api}/query", params={"query": 'qactl_kafka_topic_messages{direction="consumed"}'}, timeout=10
        ).json()["data"]["result"]
        assert {"questions-pending", "validated-responses"} <= {s["metric"]["topic"] for s in consumed}
    finally:
        server.terminate()
        server.wait(30)
        log.close()
