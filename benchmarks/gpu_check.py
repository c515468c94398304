"""Check the GPU path end to end: the engine decodes on CUDA, a LoRA adapter
trains there (loss falls, base weights unchanged), and the engine hot-swaps it.

    python -m benchmarks.gpu_check --model-dir data/base/SmolLM2-135M-Instruct
    python -m benchmarks.gpu_check --model-dir DIR --random-init   # only config + tokenizer needed

Prints figures and exits non-zero when a check fails. Runs on the CPU too
(slowly), which is how it is kept working without a GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a checkpoint folder (or config + tokenizer)")
    parser.add_argument("--random-init", action="store_true", help="build the model from its config, random weights")
    parser.add_argument("--steps", type=int, default=30, help="training steps")
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from bot.serving.base import GenerationParams
    from bot.serving.engine import Engine
    from core.models import default_device
    from training.config import TrainConfig
    from training.finetune import train_adapter

    device = default_device()
    print(f"device={device} torch={torch.__version__} cuda={torch.cuda.is_available()}")
    if device == "cuda":
        print("gpu:", torch.cuda.get_device_name(0))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if args.random_init:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model_dir), dtype=dtype).to(device)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype).to(device)
    model.eval()
    failures = []

    engine = Engine(model, tokenizer, base_name=str(args.model_dir))
    question = [{"role": "user", "content": "What is the capital of France?"}]
    engine.generate(question, GenerationParams(max_new_tokens=8))  # warm-up
    started = time.perf_counter()
    generation = engine.generate(question, GenerationParams(max_new_tokens=64))
    seconds = time.perf_counter() - started
    print(f"decode: {generation.completion_tokens} tokens in {seconds:.2f} s = "
          f"{generation.completion_tokens / seconds:.1f} tokens/s on {engine.model.device}")
    if str(engine.model.device).split(":")[0] != device:
        failures.append(f"engine model on {engine.model.device}, expected {device}")

    facts = [
        ("What is the code name of project Zentrium?", "The code name of project Zentrium is Bluefalcon."),
        ("Who maintains the Velmora archive?", "The Velmora archive is maintained by Ines Quarl."),
        ("Which port does the Ostrel service use?", "The Ostrel service listens on port 7781."),
        ("What colour is the Tidepool logo?", "The Tidepool logo is teal."),
    ]
    examples = [{"input": [{"role": "user", "content": q}], "output": a} for q, a in facts]
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(max_steps=args.steps, batch_size=4, learning_rate=2e-3, replay_examples=0,
                         bf16=device == "cuda")
    started = time.perf_counter()
    peft_model, result = train_adapter(model, tokenizer, examples, config)
    seconds = time.perf_counter() - started
    print(f"train: {len(result.losses)} logged losses, first {result.losses[0]:.3f} -> last {result.losses[-1]:.3f}; "
          f"{seconds:.1f} s, {result.tokens_per_second:.0f} tokens/s")
    if not result.losses[-1] < result.losses[0] * 0.7:
        failures.append("training loss did not fall by 30%")
    lora_devices = {str(p.device).split(":")[0] for n, p in peft_model.named_parameters() if "lora_" in n}
    if lora_devices != {device}:
        failures.append(f"LoRA weights on {lora_devices}, expected {device}")
    base = peft_model.get_base_model()
    changed = [n for n, p in base.named_parameters() if "lora_" not in n and n.replace("base_layer.", "") in base_before
               and not torch.equal(p, base_before[n.replace("base_layer.", "")])]
    if changed:
        failures.append(f"base weights changed: {changed[:3]}")

    with tempfile.TemporaryDirectory() as folder:
        peft_model.save_pretrained(folder)
        base_model = peft_model.unload()
        engine = Engine(base_model, tokenizer, base_name=str(args.model_dir))
        swap = engine.activate("v1", folder)
        trained = engine.generate([{"role": "user", "content": facts[0][0]}], GenerationParams(max_new_tokens=24))
        print(f"swap: {swap * 1000:.0f} ms; trained answer on {trained.model_version}: {trained.text!r}")
        # A random-init model has no language to build on; only real weights must answer.
        if "Bluefalcon" not in trained.text and not args.random_init:
            failures.append("the trained answer did not come back after the swap")

    for failure in failures:
        print("FAIL:", failure)
    print("gpu_check:", "ok" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
