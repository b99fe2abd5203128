"""The dashboard's LLM probe: the route resolved once, the local model server asked every poll."""

from __future__ import annotations

import pytest

from qactl.dashboard.llm_probe import ModelServerProbe, TokenRate
from services.common.settings import load_settings
from tests.qactl.client.fake_llama_server import MODEL, FakeLlamaServer, metrics_page, running


def test_token_rate_is_taken_over_the_window_and_restarts_with_the_server():
    rate = TokenRate(window_seconds=10)
    assert rate.update(1000, now=0.0) is None  # one sample: no rate yet
    assert rate.update(1000, now=1.0) == 0.0  # no answer ended in between
    assert rate.update(1300, now=3.0) == pytest.approx(100.0)  # 300 tokens in 3 s
    assert rate.update(1600, now=12.0) == pytest.approx(600 / 11)  # samples at 0 s fell out: from 1 s on
    assert rate.update(40, now=13.0) is None  # the counter went back: a new server, a new window
    assert rate.update(None, now=14.0) is None


def test_the_local_model_server_is_asked_every_poll():
    fake = FakeLlamaServer(metrics=metrics_page(predicted=1000, processing=2, deferred=3))
    clock = iter([0.0, 2.0])
    with running(fake) as url:
        port = int(url.rsplit(":", 1)[1])
        settings = load_settings(llm={"backend": "local"}, llm_server={"port": port})
        probe = ModelServerProbe(settings, clock=lambda: next(clock))
        first = probe.llm()
        fake.metrics = metrics_page(predicted=1180, processing=1, deferred=0)
        second = probe.llm()
    assert first.route.kind == "local" and first.route.model == settings.llm_server.alias
    assert first.server is not None and first.server.model == MODEL and first.server.requests_deferred == 3
    assert first.tokens_per_second is None
    assert second.server is not None and second.server.requests_processing == 1
    assert second.tokens_per_second == pytest.approx(90.0)  # 180 tokens in 2 s


def test_the_simulator_is_named_and_nothing_is_probed():
    state = ModelServerProbe(load_settings(llm={"backend": "simulated"})).llm()
    assert state.server is None
    assert state.route.simulated and state.route.answered_by == "simulated (canned answers)"
