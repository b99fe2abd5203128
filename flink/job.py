"""qactl's quality gate: the PyFlink job that scores answers and closes the regeneration loop.

llm-responses-success -> batched BERTScore F1 against the reference -> side outputs:
  score > threshold                      -> validated-responses
  score <= threshold, regenerations left -> questions-pending (attempt + 1, previous answer/score)
  score <= threshold, none left          -> low-quality-responses
  malformed input                        -> questions-dead-letter (with the reason)

Batching: records are keyed into a few shards; each shard buffers in checkpointed list state and
scores when ``batch_size`` records are waiting or ``max_wait_ms`` after the first one arrived
(a processing-time timer), so a lone message is still scored promptly. Buffered records are in
Flink state, so a TaskManager crash loses nothing: the job restarts from the last checkpoint
and re-reads from the committed offsets (at-least-once; the persister absorbs duplicates).
Which timer a shard waits for is kept by the running worker, not in checkpointed state: a
restored "timer registered" mark whose timer did not come back with it (seen after a
TaskManager kill) held every later answer of that shard, across savepoints too.

Outputs are written through Kafka table sinks so that each record keeps the question id as its
Kafka key, as every other producer of the pipeline does.

Submitted by `qactl up` (qactl/runtime/score_job.py) as
``flink run -d -py flink/job.py --config-file <flink.gate.JobConfig as JSON, mode 0600>``.
"""

from __future__ import annotations

import argparse
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

from pyflink.common import Configuration, Row, Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import (
    CheckpointingMode,
    KeyedProcessFunction,
    OutputTag,
    RuntimeContext,
    StreamExecutionEnvironment,
)
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaSource,
)
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor
from pyflink.table import StreamTableEnvironment

from services.common import topics

JOB_NAME = "qactl-score-job"
CONSUMER_GROUP = "flink-score-job"
ROUTED = Types.ROW_NAMED(["question_id", "payload"], [Types.STRING(), Types.STRING()])
OUTPUT_TOPICS = (
    topics.VALIDATED.name,
    topics.QUESTIONS_PENDING.name,
    topics.LOW_QUALITY.name,
    topics.DEAD_LETTER.name,
)
TAGS = {name: OutputTag(name.replace("-", "_"), ROUTED) for name in OUTPUT_TOPICS}

log = logging.getLogger(JOB_NAME)


class ScoreInBatches(KeyedProcessFunction):
    """Buffers a shard's answers in state and scores them together; routes by side output."""

    def __init__(self, config_json: str, batch_size: int, max_wait_ms: int) -> None:
        self.config_json = config_json
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        from flink.gate import JobConfig, QualityGate

        self.pending = runtime_context.get_list_state(ListStateDescriptor("pending", Types.STRING()))
        self.pending_count = runtime_context.get_state(ValueStateDescriptor("pending_count", Types.INT()))
        self.timers: dict[int, int] = {}  # shard -> when its timer fires; this worker's own, never restored
        self.gate = QualityGate(JobConfig.model_validate_json(self.config_json))  # loads the model once per worker
        self._export_redis_breaker(runtime_context)

    def _export_redis_breaker(self, runtime_context: RuntimeContext) -> None:
        """The status tracker's Redis circuit breaker as Flink gauges (``qactl_redis_breaker_*``
        in the REST metrics of this operator): a hung Redis shows as skipped calls, not as lag."""
        breaker = getattr(self.gate.status, "breaker", None)
        if breaker is None:
            return
        try:
            group = runtime_context.get_metrics_group().add_group("qactl_redis_breaker")
            group.gauge("open", lambda: int(breaker.open))
            for name in ("ok", "failed", "skipped", "trips"):
                group.gauge(name, lambda name=name: breaker.counts[name])
        except Exception:  # noqa: BLE001 (metrics are a view: never fail the job for them)
            log.exception("redis breaker metrics not registered")

    def process_element(self, value: str, ctx: KeyedProcessFunction.Context) -> Iterator:
        self.pending.add(value)
        count = (self.pending_count.value() or 0) + 1
        self.pending_count.update(count)
        if count >= self.batch_size:
            yield from self._flush(ctx)
            return
        shard, now = ctx.get_current_key(), ctx.timer_service().current_processing_time()
        due = self.timers.get(shard)
        # None since this worker began (a restore brings back the buffer, maybe not its timer), or
        # one well past its time that never fired: either way this answer gets a timer of its own.
        if due is None or now > due + self.max_wait_ms:
            due = now + self.max_wait_ms
            ctx.timer_service().register_processing_time_timer(due)
            self.timers[shard] = due

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator:
        shard = ctx.get_current_key()
        if self.timers.get(shard) == timestamp:
            del self.timers[shard]
        yield from self._flush(ctx)  # a restored timer too: it flushes what was restored

    def _flush(self, ctx: KeyedProcessFunction.Context) -> Iterator:
        raws = list(self.pending.get() or [])
        self.pending.clear()
        self.pending_count.clear()
        due = self.timers.pop(ctx.get_current_key(), None)
        if due is not None:
            ctx.timer_service().delete_processing_time_timer(due)
        if not raws:
            return
        for topic, question_id, payload in self.gate.process_batch(raws):
            yield TAGS[topic], Row(question_id, payload)

    def close(self) -> None:
        gate = getattr(self, "gate", None)
        if gate is not None:
            gate.close()


def shard_of(raw: str, shards: int) -> int:
    return zlib.crc32(raw.encode("utf-8", "replace")) % shards


def kafka_sink_ddl(table: str, topic: str, bootstrap: str) -> str:
    return f"""
        CREATE TEMPORARY TABLE `{table}` (question_id STRING, payload STRING) WITH (
            'connector' = 'kafka',
            'topic' = '{topic}',
            'properties.bootstrap.servers' = '{bootstrap}',
            'key.format' = 'raw',
            'key.fields' = 'question_id',
            'value.format' = 'raw',
            'value.fields-include' = 'EXCEPT_KEY',
            'sink.delivery-guarantee' = 'at-least-once'
        )"""


def build(env: StreamExecutionEnvironment, config_json: str, args: argparse.Namespace) -> None:
    from flink.gate import JobConfig

    bootstrap = JobConfig.model_validate_json(config_json).bootstrap_servers
    env.enable_checkpointing(args.checkpoint_ms, CheckpointingMode.AT_LEAST_ONCE)
    t_env = StreamTableEnvironment.create(env)

    source = (
        KafkaSource.builder()
        .set_bootstrap_servers(bootstrap)
        .set_topics(topics.LLM_SUCCESS.name)
        .set_group_id(CONSUMER_GROUP)
        # Resume where the last checkpoint committed; the very first run reads from the start.
        .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST))
        .set_value_only_deserializer(SimpleStringSchema())
        .set_property("commit.offsets.on.checkpoint", "true")
        .build()
    )
    answers = env.from_source(source, WatermarkStrategy.no_watermarks(), topics.LLM_SUCCESS.name)
    shards = args.shards
    routed = answers.key_by(lambda raw: shard_of(raw, shards), key_type=Types.INT()).process(
        ScoreInBatches(config_json, args.batch_size, args.max_wait_ms), output_type=ROUTED
    ).name("score-and-route")

    statements = t_env.create_statement_set()
    for topic, tag in TAGS.items():
        table_name = f"sink_{topic.replace('-', '_')}"
        t_env.execute_sql(kafka_sink_ddl(table_name, topic, bootstrap))
        statements.add_insert(table_name, t_env.from_data_stream(routed.get_side_output(tag)))
    statements.attach_as_datastream()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", type=Path, required=True, help="flink.gate.JobConfig as JSON")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=int, default=100)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--checkpoint-ms", type=int, default=5000)
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument(
        "--bundle-ms", type=int, default=20,
        help="how long Flink may buffer records for a Python operator (Flink's default: 1000 ms)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = Configuration()
    config.set_string("python.fn-execution.bundle.time", str(args.bundle_ms))
    config.set_string("python.fn-execution.bundle.size", "1000")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(args.parallelism)
    build(env, args.config_file.read_text(), args)
    env.execute(JOB_NAME)


if __name__ == "__main__":
    main()
