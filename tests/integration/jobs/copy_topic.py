"""A trivial PyFlink job: copy one Kafka topic to another through a Python UDF.

Submitted to the session cluster by the foundation tests. Running it proves that the Kafka
SQL connector is on the cluster's classpath and that task managers start Python workers with
qactl's interpreter.

    flink run -d -py copy_topic.py --bootstrap HOST:PORT --input IN --output OUT
"""

from __future__ import annotations

import argparse

from pyflink.table import DataTypes, EnvironmentSettings, TableEnvironment
from pyflink.table.udf import udf


@udf(result_type=DataTypes.STRING())
def mark_copied(value: str) -> str:
    return f"copied:{value}"


def kafka_table(name: str, topic: str, bootstrap: str, group: str) -> str:
    return f"""
        CREATE TABLE {name} (v STRING) WITH (
            'connector' = 'kafka',
            'topic' = '{topic}',
            'properties.bootstrap.servers' = '{bootstrap}',
            'properties.group.id' = '{group}',
            'scan.startup.mode' = 'earliest-offset',
            'format' = 'raw'
        )"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--name", default="qactl-copy-topic")
    args = parser.parse_args()

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("pipeline.name", args.name)
    # Back on a restarted task manager (the keeper's restart of a killed one), as the score job is.
    env.get_config().set("restart-strategy.type", "fixed-delay")
    env.get_config().set("restart-strategy.fixed-delay.attempts", "100")
    env.get_config().set("restart-strategy.fixed-delay.delay", "3 s")
    env.execute_sql(kafka_table("source_topic", args.input, args.bootstrap, args.name))
    env.execute_sql(kafka_table("sink_topic", args.output, args.bootstrap, args.name))
    env.create_temporary_function("mark_copied", mark_copied)
    env.execute_sql("INSERT INTO sink_topic SELECT mark_copied(v) FROM source_topic")


if __name__ == "__main__":
    main()
