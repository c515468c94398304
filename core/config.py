"""Typed serving configuration: defaults, help text, and validation that
reports every problem at once, before any model loads.

Every field declared with `_help` becomes a flag of `python launch.py serve`
(and an EXEMPLAR_* environment variable) with its help text as `--help`;
core/flags.py generates them, so adding a field here is all it takes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.datadir import DataDir
from core.errors import ConfigError

REVIEW_POLICIES = ("auto", "manual")
# The sampling temperature's range everywhere (engine, HTTP API, UI slider): OpenAI's, 0 to 2.
MAX_TEMPERATURE = 2.0
BACKENDS = ("local", "openai-upstream")
# How few-shot demonstrations enter the prompt (core/prompts.py): as earlier chat turns, or quoted in the system turn.
FEW_SHOT_FORMS = ("turns", "reference")
# vLLM's default --max-lora-rank, assumed when serving through an upstream and no limit is given.
VLLM_DEFAULT_MAX_LORA_RANK = 16
# The environment variable that carries the admin password to `serve`; child processes never get it.
ADMIN_PASSWORD_ENV = "EXEMPLAR_ADMIN_PASSWORD"


def _help(text: str, *, default: Any, **metadata: Any) -> Any:
    """A field with its help text; core/flags.py makes it a command-line flag (see there for the metadata)."""
    return field(default=default, metadata={"help": text, **metadata})


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """How the server runs: where data lives, which model, who may administer."""

    data_dir: Path = _help("Folder for the database, the converted base model and adapters.", default=Path("data"))
    base_model: str | None = _help(
        "Hugging Face model id or local folder; empty means the bundled SmolLM2-135M-Instruct.", default=None
    )
    host: str = _help("Address to bind; 127.0.0.1 keeps the server private to this machine.", default="127.0.0.1")
    port: int = _help("TCP port to listen on.", default=7860)
    admin_password: str | None = _help(
        "Password for the Admin tab and admin HTTP routes; generated at start on a loopback bind if empty.",
        default=None,
        secret=True,
    )
    review_policy: str | None = _help(
        "'auto' approves new examples at once, 'manual' waits for an admin; empty follows the bind address "
        "(auto on loopback, manual otherwise).",
        default=None,
        choices=REVIEW_POLICIES,
    )
    max_new_tokens: int = _help("Default cap on the tokens of one answer.", default=256)
    temperature: float = _help("Default sampling temperature; 0 means greedy decoding.", default=0.0)
    top_p: float = _help("Default nucleus-sampling mass.", default=1.0)
    max_context_tokens: int = _help(
        "Prompt plus answer must fit in this many tokens; older turns are dropped first.", default=2048
    )
    few_shot: bool = _help("Put similar approved examples into the prompt by default.", default=True)
    few_shot_k: int = _help("How many approved examples to put into the prompt at most.", default=3)
    few_shot_rerank: bool = _help(
        "Re-rank few-shot candidates by meaning, with question vectors from the base model's own hidden "
        "states (local backend only), and use an example only when it stands out; off uses the word score alone. "
        "It finds the right correction more often, but the bundled 135M model answers no better with it "
        "(docs/few-shot.md has the measurements).",
        default=False,
    )
    few_shot_min_similarity: float = _help(
        "With --few-shot-rerank: the least similarity (-1 to 1) of a question to an example's question "
        "for the example to be used.",
        default=0.3,
    )
    few_shot_min_margin: float = _help(
        "With --few-shot-rerank: how much more similar the best example must be than the next candidate; "
        "below it, no example is used (the question is probably about something no example answers).",
        default=0.05,
    )
    few_shot_form: str = _help(
        "How demonstrations enter the prompt: 'turns' (earlier user/assistant turns) or 'reference' "
        "(quoted in the system turn as a reference answer for a similar question).",
        default="turns",
        choices=FEW_SHOT_FORMS,
    )
    few_shot_direct: bool = _help(
        "Answer a question that rewords an approved example's question with that example's approved answer, "
        "word for word, instead of generating (local backend only; the response's exemplar.from_example names "
        "it). It is used only when retrieval is sure (the two settings below); otherwise few-shot goes on as "
        "usual. The bundled 135M model carries a demonstration over to a reworded question only 60-80% of the time; "
        "with this on it answers 16/30 paraphrases instead of 12/30 with no more near misses misled (docs/few-shot.md).",
        default=True,
    )
    few_shot_direct_min_similarity: float = _help(
        "With --few-shot-direct: the least similarity (-1 to 1) of a question to an approved example's question, "
        "names masked, for the example's answer to be served.",
        default=0.5,
    )
    few_shot_direct_min_margin: float = _help(
        "With --few-shot-direct: how much more similar the example must be than any other candidate and than "
        "every generic question about an entity (bot/fewshot.py CONTRAST_QUESTIONS) for its answer to be served.",
        default=0.25,
    )
    threads: int | None = _help("Torch CPU threads for generation; empty leaves torch's default.", default=None)
    seed_examples: Path | None = _help(
        "Start a data dir from a file of examples (any import format); applied once, skipped once seeded.",
        default=None,
        metavar="FILE",
    )
    backend: str = _help(
        "Where answers are generated: 'local' (the model in this process) or 'openai-upstream' (an "
        "OpenAI-compatible server such as vLLM, or another Exemplar; each version's adapter is loaded there). "
        "With an upstream, --train-max-lora-rank is the upstream's --max-lora-rank (vLLM's default 16 if unset).",
        default="local",
        choices=BACKENDS,
    )
    upstream_url: str | None = _help(
        "With backend openai-upstream: the upstream's base URL, e.g. http://10.0.0.5:8000 (without /v1).",
        default=None,
    )
    upstream_model: str | None = _help(
        "The upstream's name for the base model (what `vllm serve` was given); it answers while the base "
        "version serves. Empty: the first model the upstream lists. --base-model must name the same model "
        "here, for its tokenizer and chat template.",
        default=None,
    )
    upstream_api_key: str | None = _help(
        "Sent as `Authorization: Bearer` to the upstream (vLLM's --api-key; for an Exemplar upstream, its admin "
        "password). Empty sends none.",
        default=None,
        secret=True,
    )
    upstream_timeout: float = _help(
        "Seconds to wait for the upstream to connect, to start answering, or to send the next piece of an "
        "answer; past it the user gets an error instead of a hang.",
        default=30.0,
    )
    upstream_adapter_dir: str | None = _help(
        "The folder where the upstream sees this server's adapters (DATA_DIR/adapters), if it mounts the shared "
        "volume at another path, e.g. /mnt/exemplar/adapters. Empty: the same path as here.",
        default=None,
    )
    allowed_hosts: str = _help(
        "Host names the server answers to (comma-separated), besides localhost, 127.0.0.1 and [::1] on a "
        "loopback bind; any other Host header is refused, so a DNS-rebinding web page cannot reach the server. "
        "On a public bind, empty accepts any host. '*' turns the check off.",
        default="",
    )
    max_conversation_chars: int = _help(
        "Longest conversation one chat request may send, in characters (all turns together); longer ones get "
        "413. It bounds the work an anonymous user can ask for.",
        default=64_000,
    )
    max_conversation_turns: int = _help(
        "Most messages one chat request may send; more get 413.", default=200
    )
    max_upload_mb: int = _help(
        "Largest file anyone may upload through the UI (Gradio's /gradio_api/upload, used by the Admin tab's "
        "import), in MiB; larger uploads get 413.",
        default=64,
    )
    admin_login_attempts: int = _help(
        "Wrong admin passwords allowed per client address within --admin-login-window-s (the HTTP API and "
        "the Admin tab count apart); further tries from that address get 429 (a calm error in the Admin "
        "tab) until the window passes.",
        default=10,
    )
    admin_login_window_s: float = _help("The window, in seconds, over which wrong admin passwords count.", default=60.0)
    max_batch: int = _help(
        "Answers decoded together in one batch (continuous batching); more people than this wait in a queue. "
        "The chat UI admits as many at once.",
        default=16,
    )
    bf16_from_batch: int | None = _help(
        "On the CPU, decode in bf16 once the batch holds this many answers (faster there, but it changes some "
        "greedy answers: see docs/performance.md); smaller batches stay fp32. Empty: 1 on a CPU with native bf16 "
        "(AVX512-BF16 or AMX), where one answer decodes 1.25x faster in bf16, else 4. 0 keeps fp32 always.",
        default=None,
    )
    bf16_prefill_from_tokens: int = _help(
        "On the CPU, prefill prompts at least this many tokens long in bf16 (about 2.5x faster, so a long "
        "prompt's first token comes sooner), its first token included (a near tie is decided again on the "
        "decode weights); the rest of the answer still decodes in the decode dtype. It changes a few greedy answers to long prompts (see docs/performance.md). 0 keeps fp32 always.",
        default=256,
    )
    prefill_chunk_tokens: int = _help(
        "While other answers are decoding, prefill a new prompt this many tokens at a time, with a step of "
        "theirs between chunks, so a long prompt does not stall everyone's stream. 0 prefills it whole.",
        default=256,
    )

    @property
    def host_names(self) -> set[str] | None:
        """The Host header names this server answers to (lower case, no port); None accepts any."""
        extra = {h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()}
        if "*" in extra:
            return None
        if is_loopback(self.host):
            host = self.host.lower()
            return {"localhost", "127.0.0.1", "[::1]", f"[{host}]" if ":" in host else host, *extra}
        return {self.host.lower(), *extra} if extra else None

    @property
    def paths(self) -> DataDir:
        """The files inside data_dir (database, base models, adapters, logs)."""
        return DataDir(self.data_dir)

    @property
    def effective_review_policy(self) -> str:
        """The review policy in force: the explicit one, else auto on loopback and manual otherwise."""
        if self.review_policy:
            return self.review_policy
        return "auto" if is_loopback(self.host) else "manual"

    def validate(self) -> ServeConfig:
        """Raise ConfigError listing every invalid setting with its fix; return self when all is well."""
        problems = []
        if not (1 <= self.port <= 65535):
            problems.append(f"--port {self.port} is out of range: use a number from 1 to 65535")
        if self.review_policy not in (None, *REVIEW_POLICIES):
            problems.append(f"review policy {self.review_policy!r} is unknown: use 'auto' or 'manual'")
        if self.max_new_tokens < 1:
            problems.append("max_new_tokens must be at least 1")
        if not (0 <= self.temperature <= MAX_TEMPERATURE):
            problems.append(f"temperature must be from 0 (greedy) to {MAX_TEMPERATURE:g}")
        if not (0 < self.top_p <= 1):
            problems.append("top_p must be in (0, 1]")
        if self.max_context_tokens < 64:
            problems.append("max_context_tokens must be at least 64")
        elif self.max_new_tokens >= self.max_context_tokens:
            problems.append("max_new_tokens must be smaller than max_context_tokens")
        if self.few_shot_k < 0:
            problems.append("few_shot_k must be 0 or more")
        if not (-1 <= self.few_shot_min_similarity <= 1) or not (0 <= self.few_shot_min_margin <= 2):
            problems.append("few_shot_min_similarity must be from -1 to 1 and few_shot_min_margin from 0 to 2")
        if not (-1 <= self.few_shot_direct_min_similarity <= 1) or not (0 <= self.few_shot_direct_min_margin <= 2):
            problems.append(
                "few_shot_direct_min_similarity must be from -1 to 1 and few_shot_direct_min_margin from 0 to 2"
            )
        if self.few_shot_form not in FEW_SHOT_FORMS:
            problems.append(f"few_shot_form {self.few_shot_form!r} is unknown: use 'turns' or 'reference'")
        if self.threads is not None and self.threads < 1:
            problems.append("threads must be at least 1")
        if self.max_upload_mb < 1:
            problems.append("max_upload_mb must be at least 1")
        if self.max_conversation_chars < 1 or self.max_conversation_turns < 1:
            problems.append("max_conversation_chars and max_conversation_turns must be at least 1")
        if self.admin_login_attempts < 1 or not (0 < self.admin_login_window_s < float("inf")):
            problems.append("admin_login_attempts must be at least 1 and admin_login_window_s a positive number")
        if not (1 <= self.max_batch <= 256):
            problems.append("max_batch must be from 1 to 256")
        if self.bf16_from_batch is not None and self.bf16_from_batch < 0:
            problems.append("bf16_from_batch must be 0 (never) or more")
        if self.bf16_prefill_from_tokens < 0:
            problems.append("bf16_prefill_from_tokens must be 0 (never) or more")
        if self.prefill_chunk_tokens < 0:
            problems.append("prefill_chunk_tokens must be 0 (whole prompts) or more")
        if self.admin_password is not None and len(self.admin_password) < 8:
            problems.append("--admin-password must be at least 8 characters")
        if not is_loopback(self.host) and not self.admin_password:
            problems.append(
                f"--host {self.host} exposes the server beyond this machine: set --admin-password "
                "(or EXEMPLAR_ADMIN_PASSWORD) so the Admin tab is protected"
            )
        if self.backend not in BACKENDS:
            problems.append(f"backend {self.backend!r} is unknown: use 'local' or 'openai-upstream'")
        elif self.backend == "openai-upstream":
            if not self.upstream_url or not self.upstream_url.startswith(("http://", "https://")):
                problems.append(
                    "--backend openai-upstream needs --upstream-url, e.g. http://127.0.0.1:8000 (the vLLM server)"
                )
        if not self.upstream_timeout > 0:
            problems.append("--upstream-timeout must be a positive number of seconds, e.g. 30")
        data_dir = Path(self.data_dir)
        if data_dir.exists() and not data_dir.is_dir():
            problems.append(f"--data-dir {data_dir} is a file: give a folder")
        if self.base_model and self.base_model.startswith((".", "/", "~")):
            if not Path(self.base_model).expanduser().is_dir():
                problems.append(f"--base-model {self.base_model}: no such folder; give a model folder or a hub id")
        if problems:
            raise ConfigError(problems)
        return self



def validate_all(*configs: Any) -> tuple[Any, ...]:
    """Validate several configs; raise one ConfigError with every problem of all of them."""
    problems: list[str] = []
    for config in configs:
        try:
            config.validate()
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return configs
