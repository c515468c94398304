"""Adapters are read as peft saved them and served as peft merges them: the engine's logits with an
adapter active are those of `PeftModel.from_pretrained(base, path).merge_and_unload()`, whatever
the adapter's rank and alpha patterns, rsLoRA, LoRA biases or layer kind; what cannot be merged
is refused with a ModelLoadError that says why, and the engine keeps serving what it served."""

from __future__ import annotations

import copy

import pytest
import torch

from bot.serving.base import GenerationParams
from bot.serving.engine import Engine
from core.errors import ModelLoadError
from storage.vocabulary import BASE_VERSION

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def tiny_llama(tokenizer, **extra):
    """A 2-layer Llama with random weights; `extra` goes into its config (attention_bias, mlp_bias)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **extra)
    model = LlamaForCausalLM(config).eval()
    if extra.get("attention_bias") or extra.get("mlp_bias"):
        with torch.no_grad():  # transformers starts biases at zero: give the merge something to add to
            for name, param in model.named_parameters():
                if name.endswith(".bias"):
                    param.normal_(std=0.1)
    return model


def tiny_gpt2(tokenizer):
    """A 2-layer GPT-2, whose attention and MLP are transformers' Conv1D (weights stored (in, out))."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=512,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval()


def save_adapter(model, path, seed: int = 1, **settings) -> None:
    """Save a LoRA adapter for a copy of `model`, its B matrices (and LoRA biases) non-zero."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "o_proj"],
                           "init_lora_weights": False, **settings})
    peft_model = get_peft_model(copy.deepcopy(model), config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name and name.endswith(".bias"):
                param.normal_(std=0.5)
    peft_model.save_pretrained(path)


def logits(model, tokenizer):
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def peft_merged(model, path):
    """peft's own merge of the adapter at `path` into a copy of `model`: the reference."""
    from peft import PeftModel

    return PeftModel.from_pretrained(copy.deepcopy(model), path).merge_and_unload().eval()


def greedy(model, engine, n=8):
    ids = torch.tensor([engine.prepare(QUESTION, GenerationParams(max_new_tokens=n)).token_ids])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=engine.tokenizer.pad_token_id)
    return engine.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def assert_served_as_peft_merges(model, tokenizer, path):
    reference = peft_merged(model, path)
    # fp32 decoding, and a bf16 copy for long prompts (kept whatever this CPU's default), which must merge too.
    engine = Engine(model, tokenizer, base_name="tiny", max_context_tokens=256, bf16_from_batch=0,
                    bf16_prefill_from_tokens=256)
    base_logits = logits(model, tokenizer).clone()
    engine.activate("v1", path)
    assert not torch.allclose(logits(engine.model, tokenizer), base_logits, atol=1e-3)  # the adapter changes answers
    torch.testing.assert_close(logits(engine.model, tokenizer), logits(reference, tokenizer), rtol=1e-5, atol=1e-5)
    assert engine.generate(QUESTION, GenerationParams(max_new_tokens=8)).text == greedy(reference, engine)
    # The bf16 copy (long prompts' prefill) serves the same merge.
    torch.testing.assert_close(logits(engine.dtypes.bf16_model, tokenizer).float(), logits(reference, tokenizer),
                               rtol=0.05, atol=0.05)
    engine.activate(None)
    assert torch.equal(logits(engine.model, tokenizer), base_logits)


def test_rank_and_alpha_patterns_keyed_by_full_module_path_scale_as_peft_does(tokenizer, tmp_path):
    """An outside adapter (POST /v1/load_lora_adapter) may give some modules their own rank and alpha,
    keyed by the module's full path; peft matches those keys against the full name, and so must the engine."""
    model = tiny_llama(tokenizer)
    save_adapter(model, tmp_path / "patterns",
                 rank_pattern={"model.layers.0.self_attn.q_proj": 8, "model.layers.1.self_attn.o_proj": 2},
                 alpha_pattern={"model.layers.0.self_attn.q_proj": 64, "model.layers.1.self_attn.v_proj": 2})
    assert_served_as_peft_merges(model, tokenizer, tmp_path / "patterns")


def test_patterns_keyed_by_the_last_name_still_apply_to_every_such_module(tokenizer, tmp_path):
    model = tiny_llama(tokenizer)
    save_adapter(model, tmp_path / "short", rank_pattern={"q_proj": 6}, alpha_pattern={"v_proj": 40})
    assert_served_as_peft_merges(model, tokenizer, tmp_path / "short")


def test_rslora_scales_by_the_square_root_of_the_rank(tokenizer, tmp_path):
    model = tiny_llama(tokenizer)
    save_adapter(model, tmp_path / "rslora", r=16, lora_alpha=4, use_rslora=True)
    assert_served_as_peft_merges(model, tokenizer, tmp_path / "rslora")


def test_a_lora_bias_is_merged_into_the_layers_bias(tokenizer, tmp_path):
    model = tiny_llama(tokenizer, attention_bias=True, mlp_bias=True)
    save_adapter(model, tmp_path / "bias", lora_bias=True, target_modules=["q_proj", "v_proj", "down_proj"])
    assert_served_as_peft_merges(model, tokenizer, tmp_path / "bias")
    # Swapping back and forth leaves the base biases bit for bit.
    engine = Engine(model, tokenizer, base_name="tiny", bf16_from_batch=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for version in ("v1", None, "v1", None):
        engine.activate(version, tmp_path / "bias" if version else None)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_lora_bias_for_a_layer_without_one_is_refused_and_the_engine_keeps_serving(tokenizer, tmp_path):
    model = tiny_llama(tokenizer)  # no biases anywhere
    save_adapter(model, tmp_path / "v1", seed=1)
    save_adapter(model, tmp_path / "bias", seed=2, lora_bias=True)
    engine = Engine(model, tokenizer, base_name="tiny", max_context_tokens=256, bf16_from_batch=0)
    engine.activate("v1", tmp_path / "v1")
    served = engine.generate(QUESTION, GenerationParams(max_new_tokens=8)).text
    served_logits = logits(engine.model, tokenizer).clone()
    with pytest.raises(ModelLoadError, match=r"model\.layers\.\d\.self_attn\.\w_proj.*no bias.*lora_bias=False"):
        engine.activate("bias", tmp_path / "bias")
    with pytest.raises(ModelLoadError, match="lora_bias=False"):
        engine.check_adapter("bias", tmp_path / "bias")
    assert engine.version == "v1"
    assert torch.equal(logits(engine.model, tokenizer), served_logits)
    assert engine.generate(QUESTION, GenerationParams(max_new_tokens=8)).text == served


def test_conv1d_layers_are_merged_transposed_as_peft_does(tokenizer, tmp_path):
    """GPT-2 keeps its weights (in, out): peft merges B @ A transposed there (fan_in_fan_out)."""
    model = tiny_gpt2(tokenizer)
    save_adapter(model, tmp_path / "gpt2", target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                 rank_pattern={"transformer.h.0.attn.c_attn": 8})
    assert_served_as_peft_merges(model, tokenizer, tmp_path / "gpt2")


def _refusal(tokenizer, tmp_path, make) -> str:
    """Save an adapter with `make(model, folder)`, try to serve it; return the ModelLoadError's words."""
    model = tiny_llama(tokenizer)
    engine = Engine(model, tokenizer, base_name="tiny", max_context_tokens=256, bf16_from_batch=0)
    before = logits(model, tokenizer).clone()
    make(model, tmp_path / "odd")
    with pytest.raises(ModelLoadError) as refused:
        engine.activate("odd", tmp_path / "odd")
    assert engine.version == BASE_VERSION and torch.equal(logits(engine.model, tokenizer), before)
    return str(refused.value)


def _ia3(model, path):
    from peft import IA3Config, get_peft_model

    config = IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])
    get_peft_model(copy.deepcopy(model), config).save_pretrained(path)


def _extra_weight(model, path):
    from safetensors.torch import load_file, save_file

    save_adapter(model, path)
    tensors = load_file(path / "adapter_model.safetensors")
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight"] = torch.zeros(4, 4)
    save_file(tensors, path / "adapter_model.safetensors")


def _no_weights(model, path):
    save_adapter(model, path)
    (path / "adapter_model.safetensors").unlink()


@pytest.mark.parametrize(("make", "words"), [
    (lambda model, path: save_adapter(model, path, use_dora=True), "not a plain LoRA adapter (use_dora)"),
    (lambda model, path: save_adapter(model, path, modules_to_save=["lm_head"]), "modules_to_save"),
    (lambda model, path: save_adapter(model, path, target_modules=["embed_tokens", "q_proj"]), "embedding layer"),
    (_ia3, "IA3 adapter, not LoRA"),
    (_extra_weight, "cannot merge: base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight"),
    (_no_weights, "not found"),
], ids=["dora", "modules_to_save", "embedding", "ia3", "unknown weights", "no weights file"])
def test_what_cannot_be_merged_is_refused_with_the_reason(tokenizer, tmp_path, make, words):
    assert words in _refusal(tokenizer, tmp_path, make)


def test_weights_that_disagree_with_their_config_are_refused(tokenizer, tmp_path):
    """A config whose rank pattern does not match its weights would be merged with the wrong scale."""
    import json

    def edited(model, path):
        save_adapter(model, path)
        config = json.loads((path / "adapter_config.json").read_text())
        config["rank_pattern"] = {"model.layers.0.self_attn.q_proj": 8}
        (path / "adapter_config.json").write_text(json.dumps(config))

    assert "gives model.layers.0.self_attn.q_proj rank 8, its weights have rank 4" in _refusal(tokenizer, tmp_path, edited)


def test_check_adapter_refuses_non_finite_weights_and_serves_nothing_new(tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_llama(tokenizer)
    save_adapter(model, tmp_path / "nan")
    tensors = load_file(tmp_path / "nan" / "adapter_model.safetensors")
    key = next(k for k in tensors if "layers.1.self_attn.v_proj.lora_B" in k)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, tmp_path / "nan" / "adapter_model.safetensors")
    engine = Engine(model, tokenizer, base_name="tiny", bf16_from_batch=0)
    with pytest.raises(ModelLoadError, match=r"infinite or NaN weights \(model\.layers\.1\.self_attn\.v_proj\)"):
        engine.check_adapter("nan", tmp_path / "nan")
    assert engine.version == BASE_VERSION
    save_adapter(model, tmp_path / "fine")
    engine.check_adapter("fine", tmp_path / "fine")  # a sound adapter passes, and is not served by checking it
    assert engine.version == BASE_VERSION
