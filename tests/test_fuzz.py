"""Bounded fuzzing in CI: the HTTP API from its own OpenAPI schema (schemathesis),
and the import parsers (hypothesis). The property is the same everywhere: a clean
answer or a domain error, never a 5xx or an unexpected exception; and over HTTP, only
the statuses /openapi.json declares, and no request it calls invalid accepted.

Counts are bounded (schemathesis's coverage phase, then FUZZ_EXAMPLES random cases per
operation and mode; PARSER_EXAMPLES per parser test) so the file runs in about a minute;
each test prints how many cases ran.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.engine import Status, events, from_schema

from bot.auth import AdminGuard
from bot.serving.engine import Engine
from bot.serving.watcher import ModelWatcher
from core.config import ServeConfig
from core.errors import ValidationError
from storage import Store
from storage.formats import IMPORT_FORMATS, parse_examples
from tests.fakes import FakeTraining
from tests.live_app import ADMIN, ADMIN_PASSWORD

FUZZ_EXAMPLES = 15  # schemathesis's random cases per operation and mode, after its coverage phase
PARSER_EXAMPLES = 300
# What every answer to schemathesis must satisfy (its names for the checks): no 5xx, only the statuses
# /openapi.json declares for the route, and a request the schema calls invalid refused with a 4xx.
SCHEMA_CHECKS = ("not_a_server_error", "status_code_conformance", "negative_data_rejection")


def bounded(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), derandomize=True)


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value) -> bytes:
    # The import route's body is JSON lines; the schema declares it a string.
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()


def schemathesis_config(headers: dict[str, str]) -> schemathesis.Config:
    """Every phase but the stateful one: the coverage phase's boundary values and type mutations, then
    FUZZ_EXAMPLES random cases per operation and mode (positive and negative), seeded."""
    return schemathesis.Config.from_dict({
        "seed": 1,
        "headers": headers,
        "continue-on-failure": True,  # report every failure of an operation, not only its first
        "generation": {"max-examples": FUZZ_EXAMPLES, "mode": "all"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in SCHEMA_CHECKS}},
    })


def run_schemathesis(app, headers: dict[str, str]) -> tuple[Counter, Counter, dict[tuple, str]]:
    """Run schemathesis over `app`'s /openapi.json: (cases per operation, 2xx answers per operation, one
    report per kind of failure)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis_config(headers))
    cases: Counter = Counter()
    accepted: Counter = Counter()
    failures: dict[tuple, str] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            cases[event.label] += len(recorder.cases)
            accepted[event.label] += sum(1 for i in recorder.interactions.values()
                                         if i.response is not None and 200 <= i.response.status_code < 300)
            for checks in recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        key = (event.label, check.name, failure.title, failure.message)
                        failures.setdefault(key, f"{event.label}: {check.name}: {failure.title}\n"
                                                 f"    {failure.message.strip()[:300]}\n"
                                                 f"    {check.failure_info.code_sample[:500]}")
        elif isinstance(event, events.NonFatalError):  # an operation schemathesis could not test
            failures[(event.label, "error", str(event.value))] = f"{event.label}: {event.info.message}"
        elif isinstance(event, events.FatalError):
            raise event.exception
    return cases, accepted, failures


@pytest.mark.parametrize("admin", [True, False], ids=["admin", "anonymous"])
def test_the_http_api_answers_as_its_schema_says(make_client, tmp_path, store, tiny_model, tokenizer, admin, capsys):
    """schemathesis over /openapi.json (/api and /v1), with the admin password or without it: never a
    5xx, never a status the schema does not declare for the route, and no request it calls invalid accepted."""
    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=256)
    watcher = ModelWatcher(engine, store, tmp_path)
    watcher.sync()
    # A fresh guard: the anonymous run's wrong passwords (answered 429 after ten) count in this app only.
    client = make_client(engine, config=ServeConfig(data_dir=tmp_path, max_new_tokens=8), watcher=watcher,
                         training=FakeTraining(), guard=AdminGuard(ADMIN_PASSWORD))
    cases, accepted, failures = run_schemathesis(client.app, ADMIN if admin else {})
    with capsys.disabled():
        print(f"\nschemathesis ({'admin' if admin else 'anonymous'}): {sum(cases.values())} cases over "
              f"{len(cases)} operations, {sum(accepted.values())} answered 2xx, {len(failures)} kinds of failure")
    assert len(cases) >= 18 and {label.split()[1].split("/")[1] for label in cases} >= {"api", "v1"}, sorted(cases)
    # Not a walk through refusals: the routes' real work ran (generation, storing, curating).
    worked = {label for label, count in accepted.items() if count}
    assert {"POST /v1/chat/completions", "POST /api/feedback"} <= worked, accepted
    assert not admin or {"POST /v1/completions", "POST /api/examples", "POST /api/examples/import",
                         "PATCH /api/examples/{example_id}", "POST /api/train"} <= worked, accepted
    assert not failures, "\n".join(failures.values())


# -- the import parsers ------------------------------------------------------------

KEYS = ["messages", "conversations", "instruction", "input", "output", "prompt", "chosen", "rejected",
        "completion", "label", "source", "status", "split", "role", "content", "from", "value", "system"]
WORDS = ["user", "assistant", "system", "human", "gpt", "approved", "pending", "rejected", "import", "train",
         "test", "correction", "seed", "admin", "upvote"]
laced = st.tuples(st.text(max_size=5), st.text(st.characters(categories=["Cs", "Cc", "No"]), min_size=1, max_size=3),
                  st.text(max_size=5)).map("".join)  # lone surrogates, NUL and other controls, '²'
hostile_text = st.one_of(st.text(max_size=20), laced, st.sampled_from(WORDS))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), hostile_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), hostile_text), inner, max_size=5),
    ),
    max_leaves=25,
)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]), "content": scalars})
words = st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1, max_size=20)
plausible = st.builds(  # mostly well-formed, so that the storing half of the property is exercised too
    lambda q, a, extra: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], **extra},
    st.one_of(words, laced), st.one_of(words, laced),
    st.fixed_dictionaries({}, optional={"rejected": st.one_of(words, laced), "status": st.sampled_from(["approved", "pending", "bogus"]),
                                        "source": st.sampled_from(["import", "seed", "bogus"])}),
)
record = st.one_of(
    plausible,
    json_values,
    st.fixed_dictionaries({"messages": st.lists(message, max_size=4)}, optional={"rejected": scalars, "status": scalars}),
    st.fixed_dictionaries({"prompt": st.one_of(hostile_text, st.lists(message, max_size=3)),
                           "chosen": json_values, "rejected": json_values}),
    st.fixed_dictionaries({"prompt": hostile_text, "completion": json_values, "label": scalars}),
    st.fixed_dictionaries({"instruction": scalars, "output": scalars}, optional={"input": scalars, "system": scalars}),
    st.fixed_dictionaries({"conversations": st.lists(
        st.fixed_dictionaries({"from": json_values, "value": scalars}), max_size=3)}),
    st.fixed_dictionaries({"input": json_values, "output": json_values}),
)
nested = st.integers(1, 6000).map(lambda n: "[" * n + "]" * n)


def _jsonl(records: list) -> str:
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in records)


def _csv(rows: list[tuple[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["input", "output"])
    writer.writerows(rows)
    return out.getvalue()


documents = st.one_of(
    st.lists(plausible, min_size=1, max_size=3).map(_jsonl),
    st.lists(record, min_size=1, max_size=4).map(_jsonl),
    st.lists(record, max_size=4).map(json.dumps),  # a JSON array of records
    st.lists(st.tuples(hostile_text, hostile_text), max_size=4).map(_csv),
    nested,
    nested.map(lambda deep: json.dumps({"messages": "X"}).replace('"X"', deep)),
    st.binary(max_size=200),
)
formats = st.one_of(st.none(), st.sampled_from([f for f in IMPORT_FORMATS if f != "hf"]))


def _parse_and_store(document: str | bytes, fmt: str | None) -> str:
    """Parse and store: 'stored', or 'refused' on the domain ValidationError; anything else propagates."""
    try:
        rows = parse_examples(document, fmt)
    except ValidationError:
        return "refused"
    store = Store(":memory:")
    try:
        store.add_examples(rows, actor="admin")  # what the parser passes must be storable
    except ValidationError:
        return "refused"
    finally:
        store.close()
    return "stored"


def test_import_parsers_parse_or_refuse_any_document(capsys):
    outcomes: dict[str, int] = {}

    @bounded(PARSER_EXAMPLES)
    @given(document=documents, fmt=formats, as_bytes=st.booleans())
    def check(document, fmt, as_bytes) -> None:
        if as_bytes and isinstance(document, str):
            document = document.encode("utf-8", "surrogatepass")
        outcome = _parse_and_store(document, fmt)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    check()
    with capsys.disabled():
        print(f"\nimport parsers: {sum(outcomes.values())} documents: {outcomes}")
    assert outcomes.get("refused", 0) > 0 and sum(outcomes.values()) >= PARSER_EXAMPLES // 2


@pytest.mark.parametrize("fmt", [None, "jsonl", "dpo"])
def test_valid_records_survive_the_fuzz_property(fmt):
    """The property above is not vacuous: a good record of each kind parses and stores."""
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    if fmt == "dpo":
        good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    assert _parse_and_store(json.dumps(good), fmt) == "stored"
