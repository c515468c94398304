"""The engine, on a tiny Llama built from a config: streaming, concurrency,
context limits and adapter swaps."""

import threading

import pytest
import torch

from bot.engine import BASE_VERSION, Engine, GenerationParams
from core.errors import ModelLoadError, ValidationError

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def engine(tiny_model, tokenizer):
    return Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=256)


def greedy_reference(engine, messages, n):
    prompt = engine.prepare(messages, GenerationParams(max_new_tokens=n))
    ids = torch.tensor([prompt.token_ids])
    out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                pad_token_id=engine.tokenizer.pad_token_id)
    return engine.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_stream_yields_pieces_that_add_up_to_the_greedy_answer(engine):
    generation = engine.stream(QUESTION, GenerationParams(max_new_tokens=12))
    pieces = list(generation)
    assert len(pieces) > 1
    assert "".join(pieces).strip() == generation.text == greedy_reference(engine, QUESTION, 12)
    assert generation.model_version == BASE_VERSION
    assert generation.completion_tokens == 12 and generation.finish_reason == "length"
    assert generation.prompt_tokens == len(engine.prepare(QUESTION, GenerationParams(max_new_tokens=12)).token_ids)


def test_concurrent_requests_each_get_their_own_answer(engine):
    questions = [[{"role": "user", "content": f"Question number {i}"}] for i in range(4)]
    expected = [greedy_reference(engine, q, 8) for q in questions]
    results = [None] * 4

    def ask(i):
        results[i] = engine.generate(questions[i], GenerationParams(max_new_tokens=8)).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_long_conversations_are_truncated_not_crashed(engine):
    history = []
    for i in range(30):
        history += [{"role": "user", "content": f"Tell me fact {i} " + "please " * 10},
                    {"role": "assistant", "content": "Fact " + "blah " * 10}]
    generation = engine.generate([*history, {"role": "user", "content": "And now?"}], GenerationParams(max_new_tokens=8))
    assert generation.prompt.dropped_turns > 0 and generation.prompt.notices
    assert generation.prompt_tokens + 8 <= engine.max_context_tokens


def test_bad_parameters_are_refused(engine):
    for params in (GenerationParams(max_new_tokens=0), GenerationParams(temperature=-1), GenerationParams(top_p=0)):
        with pytest.raises(ValidationError):
            engine.stream(QUESTION, params)
    with pytest.raises(ValidationError, match="fewer tokens"):
        engine.stream(QUESTION, GenerationParams(max_new_tokens=250))


def test_stop_strings_end_the_answer(engine):
    full = engine.generate(QUESTION, GenerationParams(max_new_tokens=16)).text
    stop = full.split()[2]
    generation = engine.generate(QUESTION, GenerationParams(max_new_tokens=16, stop=[stop]))
    assert stop not in generation.text and full.startswith(generation.text)
    assert generation.finish_reason == "stop"


def make_adapter(model, path, seed):
    """A LoRA adapter with random (non-zero) B matrices, so it changes the output."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(path)
    peft_model.unload()


def test_adapter_swap_changes_answers_and_rollback_restores_them(engine, tmp_path, tiny_model):
    import copy

    before = engine.generate(QUESTION, GenerationParams(max_new_tokens=10)).text
    scratch = copy.deepcopy(tiny_model)
    make_adapter(scratch, tmp_path / "v1", seed=1)
    make_adapter(copy.deepcopy(tiny_model), tmp_path / "v2", seed=2)
    engine.activate("v1", tmp_path / "v1")
    with_v1 = engine.generate(QUESTION, GenerationParams(max_new_tokens=10))
    assert with_v1.model_version == "v1" and with_v1.text != before
    engine.activate("v2", tmp_path / "v2")
    with_v2 = engine.generate(QUESTION, GenerationParams(max_new_tokens=10))
    assert with_v2.model_version == "v2" and with_v2.text != with_v1.text
    engine.activate("v1", tmp_path / "v1")
    assert engine.generate(QUESTION, GenerationParams(max_new_tokens=10)).text == with_v1.text
    engine.activate(None)
    back = engine.generate(QUESTION, GenerationParams(max_new_tokens=10))
    assert back.model_version == BASE_VERSION and back.text == before


def test_swap_waits_for_the_answer_in_flight(engine, tmp_path, tiny_model):
    import copy

    make_adapter(copy.deepcopy(tiny_model), tmp_path / "v1", seed=1)
    generation = engine.stream(QUESTION, GenerationParams(max_new_tokens=40))
    first = next(iter(generation))
    engine.activate("v1", tmp_path / "v1")  # blocks until the answer above is done
    assert first and generation.model_version == BASE_VERSION
    assert engine.version == "v1"


def test_missing_adapter_is_a_clear_error_and_keeps_serving(engine, tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        engine.activate("v9", tmp_path / "nothing")
    assert engine.version == BASE_VERSION
    assert engine.generate(QUESTION, GenerationParams(max_new_tokens=4)).text is not None
