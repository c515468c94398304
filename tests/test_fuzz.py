"""Bounded fuzzing in CI: the HTTP API from its own OpenAPI schema (schemathesis),
and the import parsers (hypothesis). The property is the same everywhere: a clean
answer or a domain error, never a 5xx or an unexpected exception.

Counts are bounded (FUZZ_EXAMPLES per operation and mode; PARSER_EXAMPLES per parser
test) so the file runs in about a minute; each test prints how many cases ran.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from core.errors import ValidationError
from storage import Store
from storage.formats import IMPORT_FORMATS, parse_examples
from tests.fakes import FakeTraining
from tests.live_app import ADMIN

FUZZ_EXAMPLES = 15
PARSER_EXAMPLES = 300

def bounded(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), derandomize=True)


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value) -> bytes:
    # The import route's body is JSON lines; the schema declares it a string.
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()


def test_the_http_api_never_answers_5xx_to_schema_fuzzing(make_client, capsys):
    """Every operation in /openapi.json, admin routes with the password, positive and
    negative cases: no status of 500 or more."""
    client = make_client(training=FakeTraining())
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    ran: dict[str, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            label = f"{operation.method.upper()} {operation.path} ({mode.value})"

            @bounded(FUZZ_EXAMPLES)
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case) -> None:
                ran[label] = ran.get(label, 0) + 1
                headers = {**ADMIN, **(case.headers or {})}
                response = case.call(headers=headers)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
                )

            try:
                call()
            except AssertionError as exc:
                failures.append(f"{label}: {exc}")
            except Unsatisfiable:  # no negative case exists for an operation without inputs
                pass
    with capsys.disabled():
        print(f"\nschemathesis: {sum(ran.values())} cases over {len(ran)} operation/mode pairs")
    assert len(ran) >= 20, sorted(ran)  # the schema really was walked
    assert not failures, "\n".join(failures)


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
