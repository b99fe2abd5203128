"""The model server's state as `qactl status` and `qactl watch` read it, from a stand-in server."""

from __future__ import annotations

import pytest

from qactl.client.llm_server import ModelServerState, probe
from tests.qactl.client.fake_llama_server import MODEL, FakeLlamaServer, metrics_page, running
from tests.services.llm_gateway.server import free_port


def test_a_loaded_server_says_its_model_slots_queue_and_speed():
    fake = FakeLlamaServer(metrics=metrics_page(predicted=27293, predicted_seconds=484.224, processing=2, deferred=1))
    with running(fake) as url:
        state = probe(url)
    assert state.reachable and state.loaded
    assert (state.model, state.slots, state.requests_processing, state.requests_deferred) == (MODEL, 2, 2, 1)
    assert state.tokens_predicted == 27293
    # From the counters, not the gauge that restarts at every /metrics read (3.1 here).
    assert state.tokens_per_second == pytest.approx(27293 / 484.224)
    assert state.summary() == f"{MODEL}, 2/2 slots busy, 1 queued, 56 tok/s per answer"


def test_a_loading_server_is_reachable_not_loaded_and_says_so():
    with running(FakeLlamaServer(loading=True)) as url:
        state = probe(url)
    assert state.reachable and not state.loaded
    assert state.summary() == "Loading model"


def test_no_server_is_named_with_its_address():
    url = f"http://127.0.0.1:{free_port()}"
    state = probe(url, timeout=0.5)
    assert not state.reachable and not state.loaded
    assert state.summary().startswith(f"no answer at {url}")


def test_a_server_that_has_answered_nothing_yet_shows_no_speed():
    state = ModelServerState(True, True, model=MODEL, slots=2, requests_processing=0, requests_deferred=0)
    assert state.summary() == f"{MODEL}, 0/2 slots busy, 0 queued"
