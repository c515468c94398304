"""Few-shot retrieval: approved examples whose question resembles the user's
latest one, to be put into the prompt as demonstrations.

Two stages. storage/search.py's word score finds the candidates (FTS5 recall,
then a rarity-weighted cosine with its MIN_SCORE floor): it is good at "same
entity" and at leaving unrelated questions out. It cannot tell which of ten
corrections about one ferry company a question is about, because names
dominate it ("How many people live in Brindlemoor?" scores the Brindlemoor
*mayor* correction as high as the *population* one). So, when the base
model's weights are at hand, QuestionEmbedder re-ranks the candidates by what
the questions mean, and an example is used only when it stands out from the
other candidates (a margin): a question about an attribute no correction
covers then gets no demonstration rather than a misleading one. The vectors are
taken with names masked (mask_names), so they compare what two questions ask.

The 135M model carries a demonstration over to a reworded question only 60-80%
of the time, so when retrieval is sure that a question rewords an approved
example's question (approved_answer_for: similar enough, clearly more than any
other candidate and than generic questions about any entity, and about the same
names), the example's approved answer is served word for word (ApprovedAnswer;
ServeConfig.few_shot_direct) instead of asking the model.
benchmarks/bench_fewshot.py measures all of it; docs/few-shot.md has the tables.
Prompts are built by core/prompts.py.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from bot.serving.base import GenerationParams
from bot.serving.contracts import ChatEngine
from core.prompts import FittedPrompt
from storage import Store
from storage.search import MIN_SCORE, content_words, name_words  # the word-score floor lives with the ranking

# Candidates the word score hands to the re-ranking: enough to hold every correction about one entity.
RECALL = 10
# A message longer than this is no rewording of a stored single question (those run to 13 words in
# tests/fewshot_entities.json): it is never served an approved answer, and it is not re-ranked by
# meaning (the word score's order stands), because embedding it would cost a forward pass over all
# of it before the answer starts: 1.3 s for a 577-word message on 2 quiet cores (0.08 s for 6 words).
DIRECT_MAX_QUESTION_WORDS = 40

# The prompt that turns a question into one vector: the hidden state of its last token
# ("PromptEOL", Jiang et al. 2023). Mean-pooled states and the answer's likelihood under the
# model were measured too and told paraphrases from near misses no better than chance.
EMBED_TEMPLATE = 'This sentence : "{}" means in one word:"'

# Questions about nothing the bot was taught. Their mean vector is subtracted from every
# vector, so the cosine measures what is particular to a question and not that it is one:
# without centring, every pair of questions scores above 0.9.
GENERIC_QUESTIONS = (
    "How do I bake sourdough bread?", "Write a haiku about autumn.", "What is 17 times 23?",
    "Who painted the Mona Lisa?", "Explain photosynthesis in simple terms.", "Tell me a joke.",
    "How do I sort a list in Python?", "What causes rainbows?", "Recommend a good book about history.",
    "How far is the Moon from Earth?", "What's the weather like today?", "Translate 'good morning' into Spanish.",
    "How many legs does a spider have?", "What is the speed of light?", "Hi there!", "Thanks, that helps.",
    "What should I cook for dinner tonight?", "How do vaccines work?", "What is machine learning?",
    "Give me tips for a job interview.", "Why is the sky blue?", "What year did World War II end?",
    "How do I tie a tie?", "Can you summarise the plot of Hamlet?",
)  # fmt: skip


# Questions anyone might ask about any entity, with its name already masked out (see mask_names).
# A question is answered from an approved example only when it is closer to that example than to
# every one of these: with one or two corrections about an entity stored, the other candidates
# alone say little about whether a question asks for the same thing.
CONTRAST_QUESTIONS = (
    "Who owns it?", "Where is it?", "How big is it?", "What is it made of?", "How old is it?",
    "What is its address?", "What does it look like?", "Who started it?", "How do I contact it?",
    "Is it open on Sundays?", "What is it famous for?", "How much does it cost?", "What is its phone number?",
    "Who works there?", "How many are there?", "What is its website?", "When does it open?", "Is it safe?",
    "What are the rules?", "What is the best thing about it?",
)  # fmt: skip

MASK = "it"

# At start, the server embeds the question of up to this many approved examples (newest first) in
# the background, so the first chats that retrieve them do not wait for their vectors.
WARM_EXAMPLES = 500


def mask_names(text: str) -> str:
    """`text` with the names in it (storage.search.name_words, and numbers right after a name, as in
    "Veltrix Aero 14") replaced by "it", so two questions about one entity are compared by what they ask:
    "How many people live in Brindlemoor?" becomes "How many people live in it?"."""
    for name in sorted(name_words(text), key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(name)}'s\b", "its", text)
        text = re.sub(rf"\b{re.escape(name)}\b", MASK, text)
    text = re.sub(rf"\b{MASK}((\s+{MASK})|(\s+\d+))+\b", MASK, text)  # one mask for a whole name
    return re.sub(rf"\b(the|a|an) {MASK}\b", MASK, text)


def latest_question(messages: Sequence[dict[str, str]]) -> str:
    """The text of the last user message ('' if there is none)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


class QuestionEmbedder:
    """Question vectors from a causal LM's own hidden states: no extra model, no hub.

    The model must be the *base* weights, never an adapter-merged copy, so a
    cached vector stays valid across version swaps. Vectors are cached per
    text (an example's question is embedded once); thread-safe.
    """

    def __init__(
        self, model: Any, tokenizer: Any, *, layer_fraction: float = 0.8, cache_size: int = 20_000, masked: bool = True
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        layers = int(getattr(model.config, "num_hidden_layers", 30))
        # Layer 24 of SmolLM2-135M's 30: the last layers are tuned to predict a token, the
        # early ones to spell; measured best between 23 and 30 (benchmarks/bench_fewshot.py).
        self.layer = max(1, round(layer_fraction * layers))
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        # Names masked (mask_names): the right correction first for 29 of 30 paraphrases instead of 24
        # (python -m benchmarks.bench_fewshot --retrieval-only), because the entity, which a paraphrase and a
        # near miss share, no longer dominates the vector; what is left is what the question asks.
        self.masked = masked
        self._centre: Any = None
        self._contrast: Any = None
        self._truncated = False
        self._state: Any = None  # the last kept layer's output, once truncated (truncate_to_layer)

    def _prepare(self) -> None:
        """The centre and the contrast vectors, on first use (a server that is never asked pays nothing)."""
        import torch

        if self._centre is None:
            with torch.no_grad():
                self._centre = torch.stack([self._raw(q) for q in GENERIC_QUESTIONS]).mean(0)
                self._contrast = torch.stack(
                    [torch.nn.functional.normalize(self._raw(q) - self._centre, dim=0) for q in CONTRAST_QUESTIONS]
                )

    def truncate_to_layer(self) -> bool:
        """Drop the decoder layers above `layer` from the model, which must be this embedder's own copy.

        A vector is the state after layer `layer`: the layers above it and the output layer
        (49,152 logits for every prompt token) would be computed and thrown away. Without them a
        new question's vector takes 50 ms instead of 81 (2 cores, SmolLM2-135M, 20 questions) and is
        bit for bit the same. False (nothing changed) for a model without `model.layers`, or when
        `layer` is the last one (whose state the model gives after its final norm)."""
        decoder = getattr(self.model, "model", None)
        layers = getattr(decoder, "layers", None)
        if layers is None or len(layers) <= self.layer:
            return False
        del layers[self.layer :]

        def keep(module: Any, inputs: Any, output: Any) -> None:
            self._state = output[0] if isinstance(output, tuple) else output

        # The decoder's own hidden_states would give the last layer's state after the final norm.
        layers[self.layer - 1].register_forward_hook(keep)
        self.model = decoder
        self._truncated = True
        return True

    _shared: weakref.WeakKeyDictionary[Any, QuestionEmbedder] = weakref.WeakKeyDictionary()
    _shared_lock = threading.Lock()

    @classmethod
    def for_engine(cls, engine: ChatEngine) -> QuestionEmbedder | None:
        """One embedder per local engine, on a copy of its plain base weights (whichever version it
        serves: adapters are merged into its weights in place, and the engine keeps the originals);
        None for an engine without local weights (a fake, an upstream server)."""
        local = engine.local_model()
        if local is None or engine.tokenizer is None:
            return None
        with cls._shared_lock:
            if engine not in cls._shared:
                embedder = cls(local.base_copy(), engine.tokenizer)
                embedder.truncate_to_layer()  # the copy is the embedder's own
                cls._shared[engine] = embedder
            return cls._shared[engine]

    def _raw(self, text: str) -> Any:
        if self.masked:
            text = mask_names(text)
        ids = self.tokenizer(EMBED_TEMPLATE.format(text), return_tensors="pt", add_special_tokens=False)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in ids.items()}
        if self._truncated:
            self.model(**inputs, use_cache=False)  # the hook keeps the last layer's output
            return self._state[0, -1].float().cpu()
        out = self.model(**inputs, output_hidden_states=True)
        return out.hidden_states[self.layer][0, -1].float().cpu()

    def warm(self, questions: Sequence[str]) -> int:
        """Compute and cache the shared vectors and those of `questions` (each under the lock, so
        chats asked meanwhile interleave); return how many were new."""
        import torch

        with self._lock, torch.no_grad():
            self._prepare()
        new = 0
        for question in questions:
            with self._lock:
                cached = question in self._cache
            if not cached:
                self.vector(question)
                new += 1
        return new

    def vector(self, text: str) -> Any:
        """The unit vector of one question, centred on GENERIC_QUESTIONS."""
        import torch

        with self._lock:
            self._prepare()
            if text in self._cache:
                self._cache.move_to_end(text)
                return self._cache[text]
            with torch.no_grad():
                found = torch.nn.functional.normalize(self._raw(text) - self._centre, dim=0)
            self._cache[text] = found
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return found

    def similarity(self, a: str, b: str) -> float:
        """Cosine of two questions' centred vectors: about 0.6 for a paraphrase, 1 for the same text."""
        return float(self.vector(a) @ self.vector(b))

    def contrast_similarity(self, text: str) -> float:
        """The highest similarity of a question to CONTRAST_QUESTIONS (what anyone might ask about anything)."""
        found = self.vector(text)
        return float((self._contrast @ found).max())


def question_of(example: dict[str, Any]) -> str:
    """An example's question: the last user turn of its input."""
    return latest_question(example["input"])


def retrieve(
    store: Store,
    messages: Sequence[dict[str, str]],
    *,
    k: int = 3,
    min_score: float = MIN_SCORE,
    embedder: QuestionEmbedder | None = None,
    min_similarity: float = 0.3,
    min_margin: float = 0.05,
    recall: int = RECALL,
) -> list[dict[str, Any]]:
    """Up to `k` approved examples relevant to the user's latest question, most relevant first.

    Each has a `score` (the word score); none scores below `min_score`, so an
    unrelated question gets no examples at all. With an `embedder`, the
    candidates are re-ranked by meaning (each then has a `similarity` too); the
    best is used only when its similarity reaches `min_similarity` and beats
    the runner-up's by `min_margin`, and the others only where they also reach
    `min_similarity`. `recall` is how many of the word score's best are candidates.
    """
    if k <= 0:
        return []
    question = latest_question(messages)
    if embedder is None or len(question.split()) > DIRECT_MAX_QUESTION_WORDS:  # a long message: words only
        return store.search_examples(question, limit=k, min_score=min_score)
    candidates = store.search_examples(question, limit=max(k, recall), min_score=min_score)
    if not candidates:
        return []
    for example in candidates:
        example["similarity"] = embedder.similarity(question, question_of(example))
    ranked = sorted(candidates, key=lambda e: -e["similarity"])  # stable: the word score breaks ties
    best = ranked[0]["similarity"]
    runner_up = ranked[1]["similarity"] if len(ranked) > 1 else -1.0
    if best < min_similarity or best - runner_up < min_margin:
        return []
    return [e for e in ranked[:k] if e["similarity"] >= min_similarity]


def single_question(example: dict[str, Any]) -> bool:
    """An example whose input is one user question and nothing else: its answer stands on its own."""
    return len(example["input"]) == 1 and example["input"][0]["role"] == "user"


def entity_terms(text: str) -> set[str]:
    """The stems of the names in `text` and its numbers: what mask_names hides from the vectors."""
    return set(content_words(" ".join(name_words(text)))) | {w for w in content_words(text) if w.isdigit()}


def same_entity(question: str, example_question: str) -> bool:
    """Whether every name and number of `question` is in `example_question` too (in any case).

    The vectors compare questions with their names masked, so "the population of Harbrook" would
    match "the population of Brindlemoor", and "the Veltrix Aero 15" "the Veltrix Aero 14": an
    approved answer is served only to a question about what it names. A question with no name or
    number in it (typed in lower case, say) is never served one."""
    wanted = entity_terms(question)
    return bool(wanted) and wanted <= set(content_words(example_question))


def approved_answer_for(
    store: Store,
    messages: Sequence[dict[str, str]],
    embedder: QuestionEmbedder,
    *,
    min_similarity: float = 0.5,
    min_margin: float = 0.25,
    min_score: float = MIN_SCORE,
) -> dict[str, Any] | None:
    """The approved example whose question the latest one rewords, if retrieval is sure of it; else None.

    Sure means: among the word score's candidates, the most similar one by meaning (names masked)
    reaches `min_similarity` and beats both the runner-up and every CONTRAST_QUESTIONS by
    `min_margin`, and it names what the question names (same_entity). The example gets its
    `similarity` and `margin`. Its approved answer can then be
    served as the answer: the bundled 135M model carries a demonstration over to a reworded
    question only 60-80% of the time. Only examples that are a single question count.
    """
    question = latest_question(messages)
    if len(question.split()) > DIRECT_MAX_QUESTION_WORDS:
        return None
    candidates = store.search_examples(question, limit=RECALL, min_score=min_score)
    candidates = [e for e in candidates if single_question(e)]
    if not candidates:
        return None
    for example in candidates:
        example["similarity"] = embedder.similarity(question, question_of(example))
    ranked = sorted(candidates, key=lambda e: -e["similarity"])
    runner_up = max(ranked[1]["similarity"] if len(ranked) > 1 else -1.0, embedder.contrast_similarity(question))
    best = ranked[0]
    best["margin"] = best["similarity"] - runner_up
    if best["similarity"] < min_similarity or best["margin"] < min_margin:
        return None
    return best if same_entity(question, question_of(best)) else None


def answer_tokens(text: str, tokenizer: Any = None) -> int:
    """How many tokens `text` takes (its words, a lower bound, for an engine without a tokenizer)."""
    if tokenizer is None:
        return len(text.split())
    return len(tokenizer(text.strip(), add_special_tokens=False)["input_ids"])


class ApprovedAnswer:
    """An approved example's answer served as the answer (the AnswerStream contract), with no decoding.

    `few_shot_ids` names the example, as for a demonstration, and `from_example` says the text is
    that approved answer word for word rather than the model's.
    """

    finish_reason = "stop"

    def __init__(
        self, example: dict[str, Any], params: GenerationParams, *, model_version: str | None, completion_tokens: int = 0
    ):
        self.example = example
        self.params = params
        self.model_version = model_version
        self.from_example: int | None = example["id"]
        self.prompt = FittedPrompt(text="", token_ids=[], messages=[], demonstrations=[example])
        self.text = ""
        self._answer = example["output"].strip()
        self.completion_tokens = completion_tokens

    @property
    def prompt_tokens(self) -> int:
        return 0

    @property
    def few_shot_ids(self) -> list[int]:
        return [self.example["id"]]


    def cancel(self) -> None:
        pass

    def __iter__(self) -> Iterator[str]:
        self.text = self._answer
        yield self._answer
