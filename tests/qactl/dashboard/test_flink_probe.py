"""The dashboard's Flink probe: records in and out read off a job's detail."""

from __future__ import annotations

from qactl.dashboard.flink_probe import records_through


def test_records_through_a_job_read_from_flink_job_detail():
    # The shape of GET /jobs/<jid> (vertices with metrics, and the plan with inputs).
    detail = {
        "vertices": [
            {"id": "src", "name": "Source: llm-responses-success", "metrics": {"read-records": 0, "write-records": 120}},
            {"id": "score", "name": "score-and-route", "metrics": {"read-records": 118, "write-records": 117}},
            {"id": "sink", "name": "Sink: validated-responses", "metrics": {"read-records": 110, "write-records": 0}},
            {"id": "sink2", "name": "Sink: questions-pending", "metrics": {"read-records": 7, "write-records": 0}},
        ],
        "plan": {
            "nodes": [
                {"id": "src", "inputs": []},
                {"id": "score", "inputs": [{"id": "src", "ship_strategy": "HASH"}]},
                {"id": "sink", "inputs": [{"id": "score", "ship_strategy": "FORWARD"}]},
                {"id": "sink2", "inputs": [{"id": "score", "ship_strategy": "FORWARD"}]},
            ]
        },
    }
    assert records_through(detail) == (120, 117)
    chained = {"vertices": [{"id": "v", "metrics": {"write-records": 0}}], "plan": {"nodes": [{"id": "v"}]}}
    assert records_through(chained) == (0, None)
    assert records_through({}) == (None, None)
