"""What the speed benchmarks ask the model: short everyday questions, and a passage repeated
into a long prompt (the ~675-token one of the prefill and serving figures)."""

from __future__ import annotations

from typing import Any

# Asked several at once inside one process (bench_batching, bench_prefill).
QUESTIONS = [
    "What is the capital of France?",
    "Tell me about the history of the bicycle.",
    "How do I boil an egg?",
    "Write a haiku about the sea.",
    "What is photosynthesis?",
    "Name three famous painters and one work by each.",
    "Why is the sky blue?",
    "Give me a short tip for learning a language.",
    "What does a compiler do?",
    "Explain what a prime number is.",
    "Suggest a name for a ferry company.",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "Describe a cat in one sentence.",
    "What is 12 times 12?",
    "Who wrote Romeo and Juliet?",
]
PASSAGE = (
    "The Halvard ferry company runs boats between the harbour and the three islands. Ferries leave every hour "
    "from seven in the morning until ten at night in summer, and every two hours in winter. A single adult ticket "
    "costs four euros, children under twelve travel for half price, and bicycles ride free. "
)
LONG_QUESTION_ASKS = "\nWhen do the ferries leave?"


def long_question(tokenizer: Any, target: int = 675) -> str:
    """The passage repeated until the rendered prompt of the question is about `target` tokens long."""
    from core.prompts import encode, render_prompt

    text = ""
    while True:
        text += PASSAGE
        prompt = render_prompt(tokenizer, [{"role": "user", "content": text + LONG_QUESTION_ASKS}])
        if len(encode(tokenizer, prompt)) >= target:
            return text + LONG_QUESTION_ASKS
