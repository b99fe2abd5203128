"""What the consumer lets into Kafka of an answer: no NUL byte, nothing over the limit."""

from __future__ import annotations

from services.llm_consumer.consumer import clean_answer


def test_a_clean_answer_passes_unchanged() -> None:
    assert clean_answer("Kafka is a log.", 100) == ("Kafka is a log.", None)


def test_nul_bytes_are_removed_and_said() -> None:
    text, note = clean_answer("Kaf\x00ka\x00", 100)
    assert text == "Kafka" and note == "2 NUL byte(s) removed"


def test_an_answer_over_the_limit_is_cut_and_said() -> None:
    text, note = clean_answer("x" * 250 + "\x00", 100)
    assert text == "x" * 100
    assert note == "1 NUL byte(s) removed; cut from 250 to 100 characters"
