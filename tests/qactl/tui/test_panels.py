"""Each panel is a pure function of a snapshot: rendered here without a terminal."""

from __future__ import annotations

from dataclasses import replace

from qactl.client.llm_server import ModelServerState
from qactl.dashboard.model import ChaosRun, LlmState, RegenerationOutcomes, histogram, score_edges
from qactl.tui import panels
from services.common.backend_choice import LlmRoute
from tests.qactl.tui.conftest import render_text
from tests.qactl.tui.recorded import T0, recorded_journey, recorded_llm, recorded_snapshot


def test_sparkline_scales_to_the_peak_and_keeps_zero_blank():
    assert panels.sparkline([0, 4, 8], 3) == " ▄█"
    assert panels.sparkline([], 4) == "    "
    assert panels.sparkline([1, 2, 3, 4, 5], 2) == "▆█"  # only the latest values fit
    assert panels.sparkline([0.001, 100], 2) == "▁█"  # any traffic is visible


def test_topic_flow_lists_every_topic_with_rate_total_and_sparkline():
    text = render_text(panels.topic_flow(recorded_snapshot(), 78), 78)
    lines = text.splitlines()
    assert len(lines) == 11
    pending = next(line for line in lines if line.startswith("questions-pending"))
    assert "12.0" in pending and "1342" in pending and "█" in pending
    assert any(line.startswith("retry-quota-delay") for line in lines)
    assert max(len(line) for line in lines) <= 78


def test_topic_flow_says_why_kafka_is_missing():
    snap = replace(recorded_snapshot(), topics=(), errors={"kafka": "KafkaException: broker down"})
    assert "broker down" in render_text(panels.topic_flow(snap, 60))


def test_consumer_lag_sums_per_group_and_fits_a_narrow_column():
    text = render_text(panels.consumer_lag(recorded_snapshot(), 36), 36)
    quota = next(line for line in text.splitlines() if line.startswith("retry-quota"))
    assert "250" in quota
    assert max(len(line) for line in text.splitlines()) <= 36


def test_retries_by_type_and_attempt_with_policy_delay_and_demo_note():
    text = render_text(panels.retries(recorded_snapshot(), 40), 40)
    rows = [line.split() for line in text.splitlines()]
    assert ["overload", "2", "200ms", "24"] == rows[2][:4]
    assert ["quota", "all", "3.0s", "12"] == rows[4][:4]
    assert "delays ×0.05" in text


def test_score_histogram_marks_the_threshold_and_counts_above():
    snap = recorded_snapshot()
    text = render_text(panels.score_histogram(snap, 40), 40)
    assert "┃" in text
    assert f"{snap.scores.above}/{snap.scores.total}" in text
    # The marker sits at the same column on every bar row and on the axis.
    columns = {line.index("┃") for line in text.splitlines() if "┃" in line}
    assert len(columns) == 1


def test_score_equal_to_the_threshold_counts_below_it():
    hist = histogram([0.75, 0.76, 0.2], score_edges(0.75), 0.75)
    assert hist.above == 1 and hist.total == 3


def test_regeneration_outcomes_show_share_and_mean_score_per_attempt():
    text = render_text(panels.regeneration_outcomes(recorded_snapshot(), 44), 44)
    first = next(line for line in text.splitlines() if line.startswith("ok 1st"))
    assert first.split()[-3:] == ["880", "86", "0.842"]
    assert "low quality" in text and "failed" in text


def test_regeneration_outcomes_with_nothing_finished():
    snap = replace(recorded_snapshot(), regenerations=RegenerationOutcomes())
    text = render_text(panels.regeneration_outcomes(snap, 44), 44)
    assert "failed" in text and "–" in text


def test_components_mark_the_unhealthy_one():
    text = render_text(panels.components(recorded_snapshot(), 40), 40)
    persister = next(line for line in text.splitlines() if "persister" in line)
    assert persister.startswith("✖") and "no heartbeat" in persister
    assert all(line.startswith("●") for line in text.splitlines() if "kafka" in line)


def llm_snapshot(route: LlmRoute | None = None, server: ModelServerState | None = None, rate: float | None = None):
    recorded = recorded_llm()
    state = LlmState(route or recorded.route, server, rate) if route or server else recorded
    return replace(recorded_snapshot(), llm=state)


def test_llm_shows_the_local_model_loaded_its_speed_slots_and_queue():
    lines = render_text(panels.llm(recorded_snapshot(), 40), 40).splitlines()
    assert lines == [
        "●  local SmolLM2-135M-Instruct-Q4_1",
        "   loaded · 96 tok/s",
        "   slots 2/2 busy · 1 queued",
    ]


def test_llm_says_plainly_when_the_simulator_answers():
    route = LlmRoute("simulated", "qactl-sim", "http://127.0.0.1:11435")
    lines = render_text(panels.llm(llm_snapshot(route), 40), 40).splitlines()
    assert lines == ["○  simulated (canned answers)", "   gateway http://127.0.0.1:11435"]


def test_llm_names_another_backend_and_where_the_calls_go():
    route = LlmRoute("ollama", "llama3.2:latest", "http://127.0.0.1:11434", why="auto: Ollama answered")
    lines = render_text(panels.llm(llm_snapshot(route), 40), 40).splitlines()
    assert lines == ["○  ollama llama3.2:latest", "   at http://127.0.0.1:11434"]


def test_llm_while_the_model_loads_and_when_the_server_does_not_answer():
    loading = ModelServerState(reachable=True, loaded=False, detail="Loading model")
    text = render_text(panels.llm(llm_snapshot(server=loading), 50), 50)
    assert text.splitlines()[0].startswith("◌  local SmolLM2")
    assert "loading the model… (Loading model)" in text
    down = ModelServerState(reachable=False, loaded=False, detail="no answer at http://127.0.0.1:11436 (ConnectError)")
    text = render_text(panels.llm(llm_snapshot(server=down), 60), 60)
    assert text.splitlines()[0].startswith("✖  local")
    assert "no answer at http://127.0.0.1:11436" in text


def test_llm_missing_says_why():
    snap = replace(recorded_snapshot(), llm=None, errors={"llm": "ConnectError: refused"})
    assert "refused" in render_text(panels.llm(snap, 40), 40)


def test_health_puts_the_llm_first_and_folds_the_model_servers_own_row_into_it():
    text = render_text(panels.health(recorded_snapshot(), 40), 40)
    lines = text.splitlines()
    assert lines[0].startswith("●  local SmolLM2") and "kafka" in lines[3]
    assert "llm-server" not in text
    assert len(lines) == 3 + len(recorded_snapshot().components) - 1
    # Another backend has no server state of its own: every component row stays.
    route = LlmRoute("ollama", "llama3.2:latest", "http://127.0.0.1:11434")
    assert "llm-server" in render_text(panels.health(llm_snapshot(route), 40), 40)


def test_flink_job_state_checkpoints_and_records():
    text = render_text(panels.flink_jobs(recorded_snapshot(), 40), 40)
    assert text.splitlines()[0].startswith("RUNNING qactl-score")
    assert "118 ok 0 failed" in text
    assert "in 1198" in text and "out 1195" in text


def test_status_line_names_unreachable_parts():
    snap = replace(recorded_snapshot(), errors={"redis": "x", "flink": "y"})
    text = panels.status_line(snap, 1.0).plain
    assert "09:26:53" in text and "unreachable: flink, redis" in text
    assert "PAUSED" in panels.status_line(snap, 1.0, paused=True).plain
    assert "waiting" in panels.status_line(None, 1.0).plain


def test_question_cells_colour_scores_against_the_threshold():
    snap = recorded_snapshot()
    regenerating = snap.questions[2]
    cells = panels.question_cells(regenerating, T0, 0.75, label_width=20)
    assert [c.plain for c in cells] == ["Explain the differe…", "regenerating", "1", "0.612", "09:26:50"]
    assert cells[3].style == "red"
    unnamed = panels.question_cells(snap.questions[5], T0, 0.75)
    assert unnamed[0].plain == "q-0006"


def test_journey_timeline_shows_waits_errors_delays_and_scores():
    text = render_text(panels.journey(recorded_journey(), 0.75, 100), 100)
    lines = text.splitlines()
    assert lines[0].startswith("How does photosynthesis")
    assert "━" in lines[1]  # the journey to scale
    retry = next(line for line in lines if "retrying-overload" in line)
    assert "overload 503" in retry and "delay 2.0s" in retry and "1.2s" in retry
    assert "score 0.612 ≤ 0.75" in text
    assert "score 0.884 > 0.75" in text
    assert lines[-1].startswith("now: validated · 8 hops in 6.4s")


def test_journey_without_hops_says_so():
    from qactl.dashboard.model import Journey

    assert "no hops recorded" in render_text(panels.journey(Journey("q-x", ()), 0.75))


def test_status_line_names_the_chaos_experiment_under_way():
    quiet = panels.status_line(recorded_snapshot(), 1.0).plain
    assert "chaos" not in quiet
    running = replace(recorded_snapshot(), chaos=ChaosRun(3, "kill-persister", "fault", T0, 7))
    assert "chaos: kill-persister (fault, 7 in flight at the fault)" in panels.status_line(running, 1.0).plain


def test_consumer_lag_shows_which_member_holds_which_partition_and_a_rebalance() -> None:
    from rich.console import Console

    from qactl.dashboard.model import GroupLag
    from qactl.tui.panels import consumer_lag

    def shown(*lags: GroupLag) -> str:
        console = Console(width=60, record=True)
        console.print(consumer_lag(replace(recorded_snapshot(), lags=lags), width=60))
        return console.export_text()

    assignment = (("llm-consumer-1", (0, 1)), ("llm-consumer-2", (2,)))
    assert "×2 1:0,1 2:2" in shown(GroupLag("llm-consumer", "questions-pending", 4, 2, "stable", assignment))
    assert "preparingrebalance (3 members)" in shown(
        GroupLag("llm-consumer", "questions-pending", 4, 3, "preparingrebalance", assignment)
    )
    # A group of one keeps listing its topics.
    assert "validated-responses" in shown(GroupLag("persister", "validated-responses", 0, 1, "stable"))
