"""flink/calibrate.py: the real model's statistics (pure), what --check compares, and the
real-model mode against the local model server started through the runtime."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from flink.calibrate import distribution, main, outcomes, regeneration_figures, up_to_date
from flink.scoring import CALIBRATION_FILE
from services.common.settings import Policies, QactlSettings

THRESHOLD = Policies().quality_threshold


def test_distribution_of_made_up_scores() -> None:
    scores = [i / 10 for i in range(11)]  # 0.0, 0.1, ..., 1.0
    figures = distribution(scores)
    assert (figures["n"], figures["min"], figures["max"], figures["mean"]) == (11, 0.0, 1.0, 0.5)
    assert (figures["p25"], figures["median"], figures["p75"], figures["p90"]) == (0.25, 0.5, 0.75, 0.9)
    # Above means validated: a score equal to a threshold does not count.
    assert figures["above"] == {"0.5": 5, "0.55": 5, "0.6": 4, "0.65": 4, "0.7": 3, "0.75": 3}
    assert distribution([0.42])["median"] == distribution([0.42])["p90"] == 0.42


def test_regeneration_figures_count_gains_and_the_better_of_two() -> None:
    figures = regeneration_figures([0.5, 0.7, 0.2, 0.58], [0.6, 0.6, 0.2, 0.52], thresholds=(0.55, 0.65))
    assert figures["improved"] == 1 and figures["worse"] == 2
    assert figures["mean_gain"] == pytest.approx((0.1 - 0.1 + 0.0 - 0.06) / 4, abs=1e-4)
    assert figures["median"] == pytest.approx(0.56)
    assert figures["above"] == {"0.55": 2, "0.65": 0}
    assert figures["best_of_two_above"] == {"0.55": 3, "0.65": 1}
    with pytest.raises(ValueError):
        regeneration_figures([0.5], [0.5, 0.6])


def test_outcomes_follow_the_gate() -> None:
    chains = [[0.7], [0.5, 0.65], [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.61], [0.6, 0.6, 0.6, 0.6]]
    figures = outcomes(chains, threshold=0.6, max_regenerations=3)
    assert figures["validated_first"] == 1 and figures["validated_first_share"] == 0.2
    assert figures["validated_at_regeneration"] == [1, 1, 0]
    assert figures["low_quality"] == 2 and figures["regenerated"] == 4
    assert figures["regenerated_mean_first"] == pytest.approx((0.5 + 0.1 + 0.5 + 0.6) / 4)
    assert figures["regenerated_mean_final"] == pytest.approx((0.65 + 0.4 + 0.61 + 0.6) / 4)
    with pytest.raises(ValueError, match="before its last attempt"):
        outcomes([[0.5, 0.5]], threshold=0.6, max_regenerations=3)  # the gate would regenerate again


def test_check_compares_the_text_calibration_and_ignores_the_real_model() -> None:
    current = json.loads(CALIBRATION_FILE.read_text())
    recomputed = {k: current[k] for k in ("num_layers", "rescale", "f1_baseline", "threshold")}
    assert up_to_date(current, recomputed)
    assert up_to_date({**current, "real_model": {"first": {"median": 0.1}}}, recomputed)
    assert up_to_date({k: v for k, v in current.items() if k != "real_model"}, recomputed)
    assert not up_to_date(current, {**recomputed, "threshold": 0.75})  # the default moved
    assert not up_to_date(current, {**recomputed, "num_layers": 5})


def test_the_committed_figures_are_at_the_default_threshold() -> None:
    data = json.loads(CALIBRATION_FILE.read_text())
    assert data["threshold"] == data["real_model"]["threshold"] == THRESHOLD
    assert data["selection_threshold"] == 0.75  # where the layer was chosen: see SCORING.md


# --- against the real model server ---


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.llm
def test_real_model_mode_on_the_local_model_server(tmp_path: Path) -> None:
    """Three questions, one sample each, against a llama-server started like `qactl up` does."""
    from qactl.runtime import llm_server
    from qactl.runtime.supervisor import Supervisor

    values: dict = {"state_dir": str(tmp_path / "state"), "llm_server": {"port": free_port()}}
    if "QACTL_CACHE_DIR" in os.environ:
        values["cache_dir"] = os.environ["QACTL_CACHE_DIR"]
    settings = QactlSettings.model_validate(values)
    binary, model = llm_server.binary(settings), llm_server.model_file(settings)
    if not binary.is_file() or not model.is_file():
        pytest.skip(f"the local model server is not built ({binary}) or its model is not fetched ({model}): qactl llm build")
    output = tmp_path / "calibration.json"
    output.write_text(CALIBRATION_FILE.read_text())
    spec = llm_server.process(settings)
    supervisor = Supervisor(settings)
    supervisor.start(spec)
    try:
        supervisor.wait_healthy(spec)
        argv = ["--model-url", settings.llm_server.base_url, "--samples", "1", "--questions", "3", "--output", str(output)]
        assert main(argv) == 0
    finally:
        supervisor.stop(llm_server.NAME)

    written = json.loads(output.read_text())
    section = written.pop("real_model")
    committed = json.loads(CALIBRATION_FILE.read_text())
    committed.pop("real_model", None)
    assert written == committed  # the text calibration is kept as it was
    assert section["model"] == settings.llm_server.alias and section["server"]["model_file"] == model.name
    assert section["knowledge_base_questions"] == 3 and section["samples"] == 1 and section["first"]["n"] == 3
    assert section["request"]["max_tokens"] == settings.llm.max_tokens
    assert set(section["regeneration"]) == {"fresh", "feedback"}
    o = section["outcomes"]
    assert o["validated_first"] + sum(o["validated_at_regeneration"]) + o["low_quality"] == 3
    assert section["timing"]["calls"] >= 9  # 3 first answers, 3 fresh and 3 feedback regenerations
