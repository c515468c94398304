"""The engine, on a tiny Llama built from a config: streaming, concurrency,
context limits and adapter swaps."""

import threading

import pytest
import torch

import bot.serving.dtype as dtype_module
from bot.serving.base import GenerationParams
from bot.serving.engine import Engine
from core.errors import ModelLoadError, ValidationError
from storage.vocabulary import BASE_VERSION

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def engine(tiny_model, tokenizer):
    # fp32 at every batch size, so batched answers can be compared exactly.
    return Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=256, bf16_from_batch=0)


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


# -- continuous batching --------------------------------------------------------


def test_eight_streams_at_once_each_get_their_single_stream_answer(engine):
    """Requests that arrive while others decode join the batch and still get exactly their own greedy answer."""
    questions = [[{"role": "user", "content": f"Question {i}: " + "tell me more " * i}] for i in range(8)]
    lengths = [6, 30, 12, 25, 8, 40, 3, 18]  # different caps: rows leave the batch at different steps
    expected = [greedy_reference(engine, q, n) for q, n in zip(questions, lengths)]
    results: list = [None] * 8
    pieces: list = [[] for _ in range(8)]
    first_started = threading.Event()

    def ask(i):
        generation = engine.stream(questions[i], GenerationParams(max_new_tokens=lengths[i]))
        for piece in generation:
            pieces[i].append(piece)
            first_started.set()
        results[i] = generation

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    threads[0].start()
    first_started.wait(10)  # the rest join a batch already decoding
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(60)
    assert [g.text for g in results] == expected
    assert all(len(p) > 1 for i, p in enumerate(pieces) if lengths[i] > 3), "each answer streams in pieces"
    assert [g.completion_tokens for g in results] == lengths
    assert all(g.finish_reason == "length" for g in results)


def test_sampling_settings_and_stop_strings_are_per_request(engine):
    greedy_text = greedy_reference(engine, QUESTION, 16)
    stop = greedy_text.split()[2]
    results = {}

    def ask(name, params):
        results[name] = engine.generate(QUESTION, params)

    jobs = {
        "greedy": GenerationParams(max_new_tokens=16),
        "stopped": GenerationParams(max_new_tokens=16, stop=[stop]),
        "sampled": GenerationParams(max_new_tokens=16, temperature=1.5),
        "greedy2": GenerationParams(max_new_tokens=16),
    }
    threads = [threading.Thread(target=ask, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["greedy"].text == results["greedy2"].text == greedy_text
    assert results["stopped"].finish_reason == "stop" and stop not in results["stopped"].text
    assert greedy_text.startswith(results["stopped"].text)
    assert results["sampled"].completion_tokens >= 1  # sampled rows do not disturb the greedy ones


def test_a_client_that_leaves_frees_its_slot_at_once(tiny_model, tokenizer):
    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=512, max_batch=2, bf16_from_batch=0)
    long = GenerationParams(max_new_tokens=400)
    leaving = engine.stream(QUESTION, long)
    staying = engine.stream([{"role": "user", "content": "Another question"}], long)
    pieces = iter(leaving)
    next(pieces)
    pieces.close()  # the client went away mid-answer
    late = engine.generate([{"role": "user", "content": "A third person"}], GenerationParams(max_new_tokens=4))
    assert late.completion_tokens == 4
    # The third answer got the freed slot while the second was still decoding.
    assert not staying.finished and leaving.finished
    assert leaving.completion_tokens < 400
    staying.cancel()


# -- merged adapters ------------------------------------------------------------


def _logits(model, tokenizer):
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_adapter_matches_peft_and_the_base_never_drifts(engine, tmp_path, tiny_model, tokenizer):
    import copy

    from peft import PeftModel

    base_logits = _logits(tiny_model, tokenizer).clone()
    base_params = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    make_adapter(copy.deepcopy(tiny_model), tmp_path / "v1", seed=1)
    make_adapter(copy.deepcopy(tiny_model), tmp_path / "v2", seed=2)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(tiny_model), tmp_path / "v1").eval()
    engine.activate("v1", tmp_path / "v1")
    # Merged weights give what peft gives with the adapter unmerged.
    torch.testing.assert_close(_logits(engine.model, tokenizer), _logits(peft_model, tokenizer), rtol=1e-4, atol=1e-4)
    seconds = []
    for i in range(20):
        version = ("v1", "v2", None)[i % 3]
        seconds.append(engine.activate(version, tmp_path / version if version else None))
    engine.activate(None)
    # After 20 swaps the base is bit-for-bit the base.
    assert torch.equal(_logits(engine.model, tokenizer), base_logits)
    assert all(torch.equal(v, base_params[k]) for k, v in tiny_model.state_dict().items())
    assert max(seconds) < 0.5


def test_hot_swap_during_concurrent_streams_never_mixes_versions(engine, tmp_path, tiny_model):
    """Each answer equals the single-stream answer of the version it records."""
    import copy

    make_adapter(copy.deepcopy(tiny_model), tmp_path / "v1", seed=1)
    questions = [[{"role": "user", "content": f"Swap question {i}"}] for i in range(10)]
    n = 24
    reference = {"base": [greedy_reference(engine, q, n) for q in questions]}
    engine.activate("v1", tmp_path / "v1")
    reference["v1"] = [greedy_reference(engine, q, n) for q in questions]
    engine.activate(None)
    assert reference["v1"] != reference["base"]

    results: list = [None] * 10
    started = [threading.Event() for _ in range(10)]

    def ask(i):
        generation = engine.stream(questions[i], GenerationParams(max_new_tokens=n))
        for _ in generation:
            started[i].set()
        results[i] = generation

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(10)]
    for t in threads[:6]:
        t.start()
    assert all(event.wait(10) for event in started[:6])  # six answers are streaming
    swapper = threading.Thread(target=engine.activate, args=("v1", tmp_path / "v1"))
    swapper.start()
    for t in threads[6:]:  # these arrive while the swap waits for the batch to drain
        t.start()
    swapper.join(60)
    for t in threads:
        t.join(60)
    versions = [g.model_version for g in results]
    assert versions[:6] == ["base"] * 6
    assert "v1" in versions[6:]
    for i, generation in enumerate(results):
        assert generation.text == reference[generation.model_version][i], f"answer {i} mixes versions"


def test_a_broken_adapter_is_refused_before_anything_changes(engine, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "lora_alpha": 8}')
    (tmp_path / "bad" / "adapter_model.safetensors").write_bytes(b"not tensors")
    before = engine.generate(QUESTION, GenerationParams(max_new_tokens=6)).text
    with pytest.raises(ModelLoadError, match="does not load"):
        engine.activate("bad", tmp_path / "bad")
    assert engine.version == BASE_VERSION
    assert engine.generate(QUESTION, GenerationParams(max_new_tokens=6)).text == before


def test_big_batches_switch_to_bf16_and_single_answers_stay_fp32(tiny_model, tokenizer):
    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=256, bf16_from_batch=4)
    assert engine.dtypes.decode_model(1) is engine.model and engine.dtypes.decode_model(3).dtype == torch.float32
    assert engine.dtypes.decode_model(4).dtype == torch.bfloat16
    alone = engine.generate(QUESTION, GenerationParams(max_new_tokens=10)).text
    assert alone == greedy_reference(engine, QUESTION, 10)
    results: list = [None] * 6

    def ask(i):
        results[i] = engine.generate(QUESTION, GenerationParams(max_new_tokens=10))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(g.completion_tokens == 10 for g in results)


@pytest.mark.parametrize(
    "avx512_bf16,amx,speedup,batch,prefill",
    [
        (True, False, None, 1, 256),  # native bf16: every answer in bf16, nothing timed
        (False, True, None, 1, 256),
        (False, False, 1.9, 4, 256),  # emulated but timed faster: batches of 4 and long prompts
        (False, False, 0.5, 0, 0),  # emulated and timed slower (an AVX2-only CPU): fp32 always
    ],
)
def test_bf16_is_chosen_for_the_cpu_unless_set(tiny_model, tokenizer, monkeypatch, avx512_bf16, amx, speedup, batch, prefill):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    timed: list[int] = []

    def fake_speedup(model, rows):
        assert speedup is not None, "a CPU with native bf16 needs no timing"
        timed.append(rows)
        return speedup

    monkeypatch.setattr(dtype_module, "bf16_speedup", fake_speedup)
    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=256)
    assert (engine.bf16_from_batch, engine.dtypes.bf16_prefill_from_tokens) == (batch, prefill)
    assert engine.dtypes.decode_model(1).dtype == (torch.bfloat16 if batch == 1 else torch.float32)
    assert engine.dtypes.decode_model(4).dtype == (torch.bfloat16 if batch else torch.float32)
    assert (engine.dtypes.bf16_model is None) == (batch == 0 and prefill == 0)  # no copy kept for nothing
    assert timed == ([] if speedup is None else [dtype_module.BATCH_ROWS, dtype_module.PREFILL_ROWS])
    # Settings given win over the CPU's defaults, and are not timed.
    timed.clear()
    fp32 = Engine(tiny_model, tokenizer, base_name="tiny", bf16_from_batch=0, bf16_prefill_from_tokens=0)
    assert fp32.dtypes.decode_model(16).dtype == torch.float32 and fp32.dtypes.bf16_model is None and timed == []


def test_the_bf16_timing_tells_native_from_emulated_bf16():
    """A real timing of the bundled model's shape (576 x 1536) for a long prompt's 256 rows: native bf16
    must time clearly faster than fp32, and bf16 emulated without AVX-512 clearly slower (0.13x on an
    AVX2-only CPU), so the choice it drives is never a coin toss."""
    from types import SimpleNamespace

    from core.models import cpu_has_native_bf16

    shape = SimpleNamespace(config=SimpleNamespace(hidden_size=576, intermediate_size=1536))
    ratio = dtype_module.bf16_speedup(shape, dtype_module.PREFILL_ROWS)
    if cpu_has_native_bf16():
        assert ratio >= dtype_module.BF16_PAYS
    elif not torch.cpu._is_avx512_supported():
        assert ratio < 1
    else:  # AVX-512 without bf16: what it measures is what the engine follows
        assert 0 < ratio < 100


# -- prefill: chunks while others decode, bf16 for long prompts ------------------


@pytest.fixture
def record_forwards():
    """record(engine): a list that logs (rows, columns, dtype) of every forward pass on the engine's
    weights, fp32 and bf16 alike, from torch's hooks on them (removed after the test)."""
    handles = []

    def record(engine):
        calls = []

        def hook(model, args, kwargs):
            input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            calls.append((input_ids.shape[0], input_ids.shape[1], model.dtype))

        handles.extend(model.register_forward_pre_hook(hook, with_kwargs=True) for model in engine.dtypes.models)
        return calls

    yield record
    for handle in handles:
        handle.remove()


LONG = [{"role": "user", "content": "Please read this. " + "The ferry leaves every hour from the harbour. " * 12}]


def test_a_long_prompt_is_prefilled_in_chunks_while_others_keep_decoding(tiny_model, tokenizer, record_forwards):
    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=512, bf16_from_batch=0,
                    bf16_prefill_from_tokens=0, prefill_chunk_tokens=16)
    long_tokens = len(engine.prepare(LONG, GenerationParams(max_new_tokens=8)).token_ids)
    assert long_tokens > 100
    expected_long = greedy_reference(engine, LONG, 8)
    expected_running = greedy_reference(engine, QUESTION, 120)
    calls = record_forwards(engine)
    running = engine.stream(QUESTION, GenerationParams(max_new_tokens=120))
    pieces = iter(running)
    next(pieces)  # the first answer is decoding
    joined = engine.generate(LONG, GenerationParams(max_new_tokens=8))
    for _ in pieces:
        pass
    assert joined.text == expected_long and running.text == expected_running
    # The long prompt went in 16-token chunks, each followed by one token for the answer already decoding.
    chunks = [i for i, (rows, columns, _) in enumerate(calls) if columns > 1][1:]  # after the first answer's own
    assert [calls[i][1] for i in chunks[:-1]] == [16] * (len(chunks) - 1)
    assert sum(calls[i][1] for i in chunks) == long_tokens
    assert all(calls[i + 1][:2] == (1, 1) for i in chunks[:-1]), "the running answer decodes between chunks"


def test_with_nobody_decoding_a_long_prompt_is_prefilled_whole(tiny_model, tokenizer, record_forwards):
    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=512, bf16_from_batch=0,
                    bf16_prefill_from_tokens=0, prefill_chunk_tokens=16)
    expected = greedy_reference(engine, LONG, 4)
    calls = record_forwards(engine)
    answer = engine.generate(LONG, GenerationParams(max_new_tokens=4))
    assert calls[0][1] == answer.prompt_tokens and all(columns == 1 for _, columns, _ in calls[1:])
    assert answer.text == expected


def test_long_prompts_prefill_in_bf16_and_the_rest_of_the_answer_decodes_in_fp32(tiny_model, tokenizer,
                                                                                  record_forwards):
    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=512, bf16_from_batch=0,
                    bf16_prefill_from_tokens=64, prefill_chunk_tokens=16,
                    first_token_recheck_margin=0.0)  # never a near tie (see the next test)
    expected_short = greedy_reference(engine, QUESTION, 6)
    calls = record_forwards(engine)
    short = engine.generate(QUESTION, GenerationParams(max_new_tokens=6))
    assert short.text == expected_short  # short prompts: all fp32, today's answer
    assert {dtype for _, _, dtype in calls} == {torch.float32}
    calls.clear()
    answer = engine.generate(LONG, GenerationParams(max_new_tokens=6))
    assert answer.completion_tokens == 6
    # The whole prompt in bf16 (it gives the first token); the rest of the answer in fp32, on the cast cache.
    assert calls[0] == (1, answer.prompt_tokens, torch.bfloat16)
    assert calls[1:] == [(1, 1, torch.float32)] * 5
    # Joining a decoding batch: bf16 chunks with decode steps between.
    calls.clear()
    running = engine.stream(QUESTION, GenerationParams(max_new_tokens=120))
    pieces = iter(running)
    next(pieces)
    joined = engine.generate(LONG, GenerationParams(max_new_tokens=6))
    running.cancel()
    assert joined.completion_tokens == 6
    assert calls[0] == (1, short.prompt_tokens, torch.float32)  # the running answer's own prompt
    prompt_calls = [(columns, dtype) for rows, columns, dtype in calls[1:] if columns > 1 or dtype == torch.bfloat16]
    assert {dtype for _, dtype in prompt_calls} == {torch.bfloat16}
    assert sum(columns for columns, _ in prompt_calls) == answer.prompt_tokens
    assert max(columns for columns, _ in prompt_calls) == 16


def test_a_near_tie_first_token_is_taken_again_on_the_decode_weights(tiny_model, tokenizer, record_forwards):
    """When bf16's two likeliest first tokens are close, the first token is the fp32 weights' own pick."""
    from transformers import DynamicCache

    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=512, bf16_from_batch=0,
                    bf16_prefill_from_tokens=64, first_token_recheck_margin=float("inf"))  # every first token a tie
    calls = record_forwards(engine)
    answer = engine.generate(LONG, GenerationParams(max_new_tokens=3))
    # The prompt on bf16, then its last token again on fp32 (the recheck), then two decode steps.
    assert calls == [(1, answer.prompt_tokens, torch.bfloat16)] + [(1, 1, torch.float32)] * 3
    # By hand: all but the last prompt token on the bf16 weights, the last one on the fp32 weights.
    ids = torch.tensor([engine.prepare(LONG, GenerationParams(max_new_tokens=3)).token_ids])
    cache = DynamicCache(config=tiny_model.config)
    with torch.inference_mode():
        engine.dtypes.bf16_model(input_ids=ids[:, :-1], cache=cache, use_cache=True)
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.float(), layer.values.float()
        logits = tiny_model(input_ids=ids[:, -1:], cache=cache, use_cache=True,
                            position_ids=torch.tensor([[ids.shape[1] - 1]])).logits[0, -1]
    assert answer.token_ids[0] == int(logits.argmax())


def test_a_short_prompt_arriving_with_a_long_one_keeps_its_fp32_prefill(tiny_model, tokenizer, record_forwards):
    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=512, bf16_from_batch=0,
                    bf16_prefill_from_tokens=64)
    expected = greedy_reference(engine, QUESTION, 6)
    calls = record_forwards(engine)
    with engine.scheduler.hold():  # both wait, so the decode thread admits them in one go
        short = engine.stream(QUESTION, GenerationParams(max_new_tokens=6))
        long = engine.stream(LONG, GenerationParams(max_new_tokens=6))
    assert "".join(short).strip() == expected
    list(long)
    prefills = [call for call in calls if call[1] > 1]
    assert prefills == [(1, short.prompt_tokens, torch.float32), (1, long.prompt_tokens, torch.bfloat16)]


def test_with_bf16_from_one_answer_short_and_long_prompts_arriving_together_prefill_together(
    tiny_model, tokenizer, record_forwards
):
    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=512, bf16_from_batch=1,
                    bf16_prefill_from_tokens=64)
    calls = record_forwards(engine)
    with engine.scheduler.hold():  # both wait, so the decode thread admits them in one go
        short = engine.stream(QUESTION, GenerationParams(max_new_tokens=6))
        long = engine.stream(LONG, GenerationParams(max_new_tokens=6))
    assert "".join(short) and "".join(long)
    # Both would be prefilled in bf16 anyway: one pass for the two, not one each.
    assert [call for call in calls if call[1] > 1] == [(2, long.prompt_tokens, torch.bfloat16)]


def test_hold_waits_for_the_answers_in_flight_and_admits_nothing_until_it_exits(engine):
    running = engine.stream(QUESTION, GenerationParams(max_new_tokens=30))
    pieces = iter(running)
    next(pieces)  # decoding
    with engine.scheduler.hold():
        assert running.finished and running.completion_tokens == 30  # drained before the block starts
        waiting = engine.stream(QUESTION, GenerationParams(max_new_tokens=4))
        assert not waiting.finished and waiting.completion_tokens == 0 and waiting.model_version is None
        engine.version = "held"  # what an adapter swap does inside the block
    assert "".join(waiting) and waiting.completion_tokens == 4 and waiting.model_version == "held"
    list(pieces)
