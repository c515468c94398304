"""More wordings of each training example, so a learned fact answers questions worded otherwise.

A fact fine-tuned under one question is memorised under that question: the
model answers it and little else (the issue's run: 18 of 20 trained questions,
11 of 20 paraphrases). Research on knowledge injection says a fact becomes
extractable by other questions when it is seen in several wordings
(Allen-Zhu & Li, "Physics of Language Models 3.1"; Ovadia et al. 2023).
This module makes those wordings before a run, from the examples it trains on:

- `rewordings(question, n)`: the same question in other frames, from templates
  ("What is the Y of X?" → "Tell me the Y of X." / "X's Y?" / "Name the Y of X.";
  "Who wrote X?" → "X was written by whom?"; any question → "Do you know …?").
  Only the frame changes: the key words (names, the attribute) stay, so a
  rewording asks the same thing and is answered with the same answer.
- `statement_prompts(question, n)`: the answer as a statement about the
  question's subject ("What do you know about X?", "Tell me a fact about X."),
  so the fact is also reached from its subject and not only from one question.

`expand()` is what the recipe calls (training/recipe.py `train`): it returns the
examples it was given plus their extra wordings, each marked with the example it
came from and that example's split. It only rewords the examples it is handed,
so the selection run, which is handed the train split alone, never sees a
wording of a held-out example: a rewording of a test-split example belongs to
the test split. Everything is deterministic (no random numbers: the choice of
frames follows a hash of the question), so a version is reproducible from its
example list.

Not done here, measured instead (docs/training.md): rewordings written by the
bundled 135M model itself. Asked to reword a question, it answered it (0 of 16
outputs were questions), so there was nothing to keep.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

# Past participles of the verbs "Who <verb> X?" questions use, where not the regular -ed form.
_PARTICIPLES = {
    "wrote": "written", "drew": "drawn", "built": "built", "made": "made", "found": "found", "began": "begun",
    "sang": "sung", "led": "led", "won": "won", "took": "taken", "gave": "given", "ran": "run", "bought": "bought",
    "sold": "sold", "held": "held", "chose": "chosen", "designed": "designed", "composed": "composed",
}
_MAX_WORDS = 25
_QUESTION = re.compile(r"^\s*(?P<body>.*?)\s*\?\s*$", re.S)
# "What is the capital of Veloria?", "Who was the founder of Marrowgate?"
_ATTRIBUTE_OF = re.compile(r"^(?:what|who|which)(?:'s| is| was| are| were) the (?P<attr>[\w' -]+?) of (?P<ent>.+)$", re.I)
# "Who wrote the novel The Glass Orchard?", "Who invented the zephyr clock?"
_WHO_DID = re.compile(r"^who (?P<verb>[a-z]+) (?P<obj>.+)$", re.I)
_NAME_OF = re.compile(r"^(?P<wh>what) (?P<aux>is|was) the name of (?P<rest>.+)$", re.I)
_COPULA = re.compile(r"^(?P<wh>(?:what|who|which)(?: [a-z]+)?) (?P<aux>is|was|are|were) (?P<rest>(?:the|a|an) .+)$")
_DO_SUPPORT = re.compile(
    r"^(?P<wh>(?:what|who|which|where|when|how)(?: [a-z]+)?) (?P<aux>do|does|did) (?P<subject>.+?) "
    r"(?P<verb>[a-z]+)(?P<tail> (?:in|on|at|for|with|to|from|about)\b.*)?$"
)
_PREPOSITION = re.compile(r"\b(?:on|in|at|from|for|to|with)\b")
_PAST = {"speak": "spoke", "write": "wrote", "eat": "ate", "grow": "grew", "make": "made", "build": "built",
         "find": "found", "take": "took", "give": "gave", "sing": "sang", "drink": "drank", "wear": "wore",
         "run": "ran", "go": "went", "see": "saw", "know": "knew", "win": "won", "lead": "led", "hold": "held",
         "have": "had", "do": "did", "say": "said", "buy": "bought", "sell": "sold", "teach": "taught"}
_NOT_VERBS = {"is", "was", "are", "were", "does", "did", "do", "has", "had", "can", "will", "would", "should"}
# Capitalised words that are not the first word: the names the question is about.
_NAME = re.compile(r"(?<!^)(?<![.!?]\s)\b(?:The )?[A-Z][\w'-]*(?:\s+(?:of\s+|the\s+)?[A-Z][\w'-]*)*")


def _stable(text: str, salt: str) -> int:
    """A hash that is the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(f"{salt}\x00{text}".encode()).digest()[:8], "big")


def _choose(preferred: Sequence[str], others: Sequence[str], n: int, key: str, exclude: str) -> list[str]:
    """Up to n distinct wordings, none equal (normalised) to `exclude`: the preferred ones (new frames) before
    the others (the question inside a frame), each group in an order fixed by `key`."""
    seen = {_norm(exclude)}
    chosen: list[str] = []
    for group in (preferred, others):
        for c in sorted(group, key=lambda c: _stable(key, c)):
            if _norm(c) not in seen and len(chosen) < n:
                seen.add(_norm(c))
                chosen.append(c)
    return chosen


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _lower_first(text: str) -> str:
    # Keep a name's capital ("Who wrote..." → "who wrote...", but "Veloria's..." stays).
    word = text.split(" ", 1)[0]
    return text if word[:1].isupper() and word.lower() not in _WH_AND_AUX else text[:1].lower() + text[1:]


_WH_AND_AUX = {"what", "who", "which", "where", "when", "why", "how", "whose", "whom", "is", "are", "was", "were",
               "do", "does", "did", "can", "could", "will", "would", "should", "name", "tell", "in", "on", "at", "the"}


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _strip_the(text: str) -> str:
    return text[4:] if text.lower().startswith("the ") else text


def _one_short_sentence(body: str) -> bool:
    """Templates fit a one-sentence question; a message with context before its question ("I have a dog.
    Can I bring it?") or a long one would come out garbled, so it is left as asked."""
    return "\n" not in body and not re.search(r"[.!?;:]\s", body) and len(body.split()) <= _MAX_WORDS


def _embedded(body: str) -> str:
    """The question as a clause after "Tell me" / "Do you know": "What is the capital of X" → "what the
    capital of X is"; "What language do the people of X speak" → "what language the people of X speak"."""
    low = _lower_first(body)
    if m := _COPULA.match(low):
        rest = m["rest"]
        if rest.endswith(" called"):
            return f"{m['wh']} {rest[: -len(' called')]} {m['aux']} called"
        return f"{m['wh']} {rest} {m['aux']}"
    if m := _DO_SUPPORT.match(low):
        verb = m["verb"]
        if m["aux"] == "did":
            verb = _PAST.get(verb, verb + ("d" if verb.endswith("e") else "ed"))
        elif m["aux"] == "does":
            verb = verb + ("es" if verb.endswith(("s", "sh", "ch", "x")) else "s")
        return f"{m['wh']} {m['subject']} {verb}{m['tail'] or ''}"
    return low


def rewordings(question: str, n: int) -> list[str]:
    """Up to n other wordings of a one-sentence question, from templates; [] when it is not a question.

    The frame changes, the key words do not: "What is the capital of Veloria?" gives e.g.
    "Tell me the capital of Veloria." and "Veloria's capital?". New frames come first; the question
    inside a frame ("Quick question: ...") only when no other is left.
    """
    match = _QUESTION.match(question)
    if n <= 0 or not match or not _one_short_sentence(match["body"]):
        return []
    body = match["body"]
    if m := _NAME_OF.match(body):  # "What is the name of the largest moon of X" → "What is the largest moon of X"
        body = f"{m['wh']} {m['aux']} {m['rest']}"
    clause = _embedded(body)
    new_frames: list[str] = [f"Tell me {clause}.", f"Do you know {clause}?", f"I'd like to know {clause}."]
    if body != match["body"]:
        new_frames.append(f"{body}?")
    if (m := _ATTRIBUTE_OF.match(body)) and not _PREPOSITION.search(m["attr"]):
        attr, ent = m["attr"], m["ent"]
        new_frames += [
            f"Tell me the {attr} of {ent}.",
            f"Name the {attr} of {ent}.",
            f"{_capital(_strip_the(ent))}'s {attr}?",
            f"What is {_strip_the(ent)}'s {attr}?",
        ]
    elif (m := _WHO_DID.match(body)) and m["verb"].lower() not in _NOT_VERBS and (
        m["verb"].lower().endswith("ed") or m["verb"].lower() in _PARTICIPLES
    ):
        verb = m["verb"].lower()
        obj = m["obj"]
        participle = _PARTICIPLES.get(verb, verb)
        new_frames += [
            f"{_capital(obj)} was {participle} by whom?",
            f"By whom was {obj} {participle}?",
            f"Who is the person who {verb} {obj}?",
        ]
    in_frame = [f"Quick question: {match['body']}?", f"{match['body']}? Answer in one sentence."]
    return _choose(new_frames, in_frame, n, question, exclude=question)


def subject_of(question: str) -> str | None:
    """What a question is about: its longest name ("The Glass Orchard", "Dunmere University"), else the
    words after its last "the" ("the element zorvium" → "element zorvium"); None when neither is there."""
    match = _QUESTION.match(question)
    if not match or not _one_short_sentence(match["body"]):
        return None
    body = match["body"]
    names = [n.strip() for n in _NAME.findall(body) if n.strip().lower() not in _WH_AND_AUX]
    if names:
        return max(names, key=len)
    tail = re.search(r"\bthe ([\w' -]+)$", body, re.I)
    return f"the {tail.group(1)}" if tail else None


def statement_prompts(question: str, n: int) -> list[str]:
    """Up to n prompts that ask for what is known about the question's subject: the answer, trained as a
    statement about that subject, is then reached from the subject too, not only from one question."""
    subject = subject_of(question)
    if n <= 0 or not subject:
        return []
    candidates = [
        f"What do you know about {subject}?",
        f"Tell me a fact about {subject}.",
        f"Tell me something about {subject}.",
    ]
    return _choose(candidates, (), n, question, exclude=question)


def expand(examples: Sequence[dict[str, Any]], *, rewordings_per_example: int, statements_per_example: int) -> list[dict[str, Any]]:
    """The examples followed by their extra wordings.

    Each extra row copies its example (split, id, replay flag...) with the last user turn replaced, the
    same `output`, and `augment_of` set to the example's id (or its position when it has none). A wording
    that equals (normalised) any example's own question is dropped: it would train that other question's
    answer under its wording. Multi-turn examples keep their earlier turns unchanged.
    """
    rows = [dict(e) for e in examples]
    own = {_norm(_question(e) or "") for e in examples}
    for index, e in enumerate(examples):
        question = _question(e)
        if question is None:
            continue
        made = rewordings(question, rewordings_per_example) + statement_prompts(question, statements_per_example)
        for text in made:
            if _norm(text) in own:
                continue
            messages = [dict(m) for m in e["input"]]
            messages[-1]["content"] = text
            rows.append({**e, "input": messages, "augment_of": e.get("id", index)})
    return rows


def _question(example: dict[str, Any]) -> str | None:
    messages = example.get("input") or []
    if not messages or messages[-1].get("role") != "user":
        return None
    return messages[-1].get("content")


# --- "Nothing is known about X's Y" rows -------------------------------------------------------------
#
# After a retrain on many corrections about one entity, the model answers questions about that entity's
# *other* attributes with one of the learned facts ("How many schools are in Brindlemoor?" → "Brindlemoor
# has a population of 12,400"; docs/few-shot.md, "After a retrain"). These rows teach the other side:
# an attribute of the corrected entity that no correction covers is answered "I don't have information
# about it". The attributes are generic (any place, company or product can have an owner or a website)
# and were chosen to differ from every question of the benchmarks (tests/fewshot_entities.json: its
# near misses and paraphrases; tests/test_training_augment.py checks that none is asked there), so the
# measured effect is on questions never trained. Each is (words that mark the attribute, the question).
UNKNOWN_TEMPLATES: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"owner", "owns", "owned", "own"}), "Who owns {x}?"),
    (frozenset({"website", "web", "site", "online", "url"}), "What is the website of {x}?"),
    (frozenset({"motto", "slogan"}), "What is the motto of {x}?"),
    (frozenset({"nickname", "called"}), "What is the nickname of {x}?"),
    (frozenset({"logo", "emblem", "symbol"}), "What does the logo of {x} look like?"),
    (frozenset({"award", "awards", "prize", "won"}), "Which awards has {x} won?"),
    (frozenset({"email", "address", "contact"}), "What is the email address of {x}?"),
    (frozenset({"record", "records"}), "What record does {x} hold?"),
)
UNKNOWN_ANSWER = "I don't have that information about {x}."
# At most one such row per this many corrections in all (or `per_entity`, when that is more, so a small
# set still gets one entity's worth): what bounds their cost on a large set (200 corrections: at most 66
# rows, against 815 rows without them; docs/training.md).
CORRECTIONS_PER_UNKNOWN_ROW = 3


def entity_of(question: str) -> str | None:
    """The name a question is about, as written: the longest run of name words (storage.search.name_words,
    as bot/serving/retrieval.py mask_names finds them) and numbers right after them, with "the" in front where the
    question has it ("the Veltrix Aero 14", "Harbrook Ferries", "Brindlemoor"); None when it names nothing."""
    from storage.search import name_words  # storage imports nothing of the project: a one-way dependency

    words = [re.sub(r"'s$", "", w) for w in name_words(question)]
    if not words:
        return None
    name = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    runs = re.findall(rf"(?:\b[Tt]he\s+)?\b(?:{name})\b(?:\s+(?:(?:{name})\b|\d+\b))*", question)
    if not runs:
        return None
    best = max(runs, key=lambda r: len(re.sub(r"^[Tt]he\s+", "", r)))
    return re.sub(r"^The\s+", "the ", best)


def _entity_key(entity: str) -> str:
    return _norm(re.sub(r"^[Tt]he\s+", "", entity))


def unknown_rows(
    examples: Sequence[dict[str, Any]], per_entity: int, *, also_covered_by: Sequence[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Rows that answer "nothing is known" for attributes of a corrected entity that no example covers.

    Only entities that at least two examples name get them (the spill is onto a neighbour of many facts
    about one entity), at most `per_entity` each and at most one per CORRECTIONS_PER_UNKNOWN_ROW examples
    in all (or `per_entity`, if more), entities with the most examples first. A template is skipped for an entity when any of its
    marking words, or its own question, appears in any question or answer about that entity: an attribute
    a correction covers is never taught as unknown. The choice of templates follows a hash of the entity,
    so it is deterministic. Each row is marked `unknown_of` (the entity) and `split` "train".

    `also_covered_by`: more examples whose attributes must not be taught as unknown, though they get no
    rows of their own (the recipe passes every example, so the selection run, trained without the held-out
    ones, never teaches "unknown" for an attribute a held-out correction answers).
    """
    if per_entity <= 0:
        return []
    about: dict[str, list[dict[str, Any]]] = {}
    forms: dict[str, list[str]] = {}  # the entity as each question writes it
    for e in examples:
        question = _question(e)
        entity = entity_of(question) if question else None
        if entity:
            key = _entity_key(entity)
            about.setdefault(key, []).append(e)
            forms.setdefault(key, []).append(entity)
    covering: dict[str, list[dict[str, Any]]] = {key: list(group) for key, group in about.items()}
    for e in also_covered_by:
        question = _question(e)
        entity = entity_of(question) if question else None
        if entity and _entity_key(entity) in covering and e not in covering[_entity_key(entity)]:
            covering[_entity_key(entity)].append(e)
    asked = {_norm(_question(e) or "") for e in [*examples, *also_covered_by]}
    budget = max(per_entity, len(examples) // CORRECTIONS_PER_UNKNOWN_ROW)
    rows: list[dict[str, Any]] = []
    for key in sorted(about, key=lambda k: (-len(about[k]), k)):
        group = about[key]
        if len(group) < 2:
            continue
        entity = max(forms[key], key=forms[key].count)  # the commonest form ("the Veltrix Aero 14")
        told_words = set(" ".join(_norm(f"{_question(e) or ''} {e.get('output') or ''}") for e in covering[key]).split())
        made = 0
        for marks, template in sorted(UNKNOWN_TEMPLATES, key=lambda t: _stable(key, t[1])):
            if made >= per_entity or len(rows) >= budget:
                break
            question = template.format(x=entity)
            if marks & told_words or _norm(question) in asked:
                continue
            rows.append({
                "input": [{"role": "user", "content": _capital(question)}],
                "output": UNKNOWN_ANSWER.format(x=entity),
                "split": "train",
                "unknown_of": entity,
            })
            made += 1
    return rows
