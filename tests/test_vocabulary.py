"""The vocabulary's str enums read as the words they replace: stored, encoded,
formatted and compared as those words, and named in error messages."""

from __future__ import annotations

import json

import pytest

from storage.errors import ValidationError
from storage.vocabulary import ExampleSource, ExampleStatus, JobStatus, Split


def test_a_member_is_its_word():
    assert ExampleStatus.APPROVED == "approved" and {"approved": 1}[ExampleStatus.APPROVED] == 1
    assert f"{ExampleStatus.PENDING}|{Split.TEST:>5}" == "pending| test"
    assert str(JobStatus.RUNNING) == "running" and json.dumps([ExampleSource.SEED]) == '["seed"]'
    assert ExampleStatus("superseded") is ExampleStatus.SUPERSEDED


def test_the_store_keeps_and_checks_the_words(store):
    example_id = store.add_example("Q?", "A.", source=ExampleSource.ADMIN, status=ExampleStatus.PENDING, split=Split.TEST)
    row = store.get_example(example_id)
    assert (row["source"], row["status"], row["split"]) == ("admin", "pending", "test")
    assert type(row["status"]) is str
    assert store.count_examples(status=ExampleStatus.PENDING) == 1 == store.count_examples(status="pending")
    with pytest.raises(ValidationError, match="status must be one of pending, approved, rejected, not 'superseded'"):
        store.update_example(example_id, status="superseded")
    with pytest.raises(ValidationError, match="split must be one of train, test"):
        store.add_example("Q?", "A.", source="admin", split="validation")
