"""ChatService.answer writes the conversation's rows before any decoding starts,
and a refused answer leaves no rows behind."""

from __future__ import annotations

import pytest

from bot.chat.service import ChatService
from core.config import ServeConfig
from core.errors import ValidationError
from tests.fakes import FakeEngine


class RowCheckingEngine(FakeEngine):
    """Records which rows existed when generation was asked for; refuses when told to."""

    def __init__(self, store, refuse: bool = False):
        super().__init__()
        self.store, self.refuse, self.rows_at_start = store, refuse, None

    def stream(self, messages, params=None, demonstrations=()):
        self.rows_at_start = [(m["role"], m["content"]) for m in self.store.conversation_messages(1)]
        if self.refuse:
            raise ValidationError("max_tokens leaves no room for the prompt")
        return super().stream(messages, params, demonstrations)


def test_rows_are_written_before_generation_starts(store):
    engine = RowCheckingEngine(store)
    store.add_example("What is the office wifi?", "It is ExemplarNet.", source="admin", split="train")
    # Direct answers off: the model answers, shown the example (served word for word it would not decode).
    config = ServeConfig(few_shot_direct=False)
    answer = ChatService(engine, store, config).answer([{"role": "user", "content": "What is the office wifi?"}])
    assert engine.rows_at_start == [("user", "What is the office wifi?"), ("assistant", "")]
    assert "".join(answer) == "You said: What is the office wifi?"
    row = store.get_message(answer.message_id)
    assert row["content"] == answer.text and row["few_shot_ids"] == answer.few_shot_ids == [1]


@pytest.mark.parametrize("existing", [False, True])
def test_a_refused_answer_leaves_no_rows(store, existing):
    service = ChatService(FakeEngine(), store, ServeConfig())
    conversation_id = None
    if existing:
        first = service.answer([{"role": "user", "content": "Hello"}])
        "".join(first)
        conversation_id = first.conversation_id
    service.engine = RowCheckingEngine(store, refuse=True)
    with pytest.raises(ValidationError):
        service.answer([{"role": "user", "content": "Hello again"}], conversation_id=conversation_id)
    assert store.count_conversations() == (1 if existing else 0)
    assert store.count_messages() == (2 if existing else 0)
