"""Does a stored question ask what the user's question asks? Look at the words that differ.

Sentence vectors cannot tell a minimal pair from a paraphrase: all-MiniLM-L6-v2 puts "How much
does an adult ticket cost?" at 0.93 from "How much does a child ticket cost?", higher than most
true rewordings, because everything but the one word is shared. Word vectors cannot either:
synonyms and the members of one kind score alike (kid/child 0.81 and price/cost 0.74, but
Sunday/Monday 0.83, cats/dogs 0.72 and husband/wife 0.87; benchmarks/bench_fewshot.py prints
them). So an approved answer is asserted for a question only when the question's words are
*covered* by the stored question and its answer: each content word of the question is one of
theirs (the same stem), a near-identical form of one (word cosine >= SAME_WORD: bike/bicycle,
email/e-mail), or a word that only frames the question (FRAMING). A number must be the same
number, a name the same name. Anything else is a word the stored answer was not given for
("adult" where it said "child", "capacity" added to "the newest boat"), and the stored answer
is then at most shown as related, never stated as the answer.

This gives up some rewordings ("What do kids pay…" is only shown the child fare as related)
to never state a neighbour's fact: precision before recall. docs/few-shot.md has the counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from storage.search import STOPWORDS, name_words, porter_stem

# Function words that can carry the difference between two questions: "before 9" is not
# "after 9", "the last bus" not "the first bus". The word score (storage/search.py) ignores
# most of them. One of them in the question counts only against another of them in the stored
# texts ("open" against "close"); added alone ("Who set it *up* in the *first* place?") it does not.
CONTRASTIVE = frozenset(
    """
    before after above below over under off up down in out more most less least fewer first last next previous
    early earlier earliest late later latest open opens opening close closes closing start starts end ends
    begin begins finish finishes arrive arrives leave leaves
    """.split()  # noqa: SIM905 (a word list reads best as words)
)
IGNORED = STOPWORDS - CONTRASTIVE

# Words that say how a question is asked, not what it asks about, by the kind of answer they ask
# for: "What do kids *pay*…" asks for an amount as "How much is…" does. A question may use one of
# a kind the stored texts use too; "generic" ones it may add freely. "The *price* of the textbook"
# is not "the textbook": a kind the stored texts do not ask for is a word they do not cover.
FRAMING_KINDS = {  # each word in one kind ("early" and "late" are CONTRASTIVE, never framing)
    "amount": "cost costs price prices priced pay paying paid much fee fees amount charge charges",
    "clock": "times hour",
    "duration": "long take takes took time hours minutes",
    "distance": "far distance",
    "contact": "call ring reach contact number",
    "generic": "find get able possible allowed allow permitted exactly currently actually usually generally "
    "typically normally still right now today please help tell know need needs want like kind sort type "
    "someone somebody anyone people person exist exists available offer offers provide provides "
    "bring carry catch mean means called",
}
FRAMING = {word: kind for kind, words in FRAMING_KINDS.items() for word in words.split()}

# Word cosine (all-MiniLM-L6-v2, a word alone) from which two different words are taken for
# one: bike/bicycle 0.92, email/e-mail 0.91, kids/children 0.88; the closest pair of different
# things measured is husband/wife at 0.87, and weekdays reach 0.86.
SAME_WORD = 0.88
# A word swapped for the stored one in the question itself: the question's cosine to itself
# with the swap made. Rewordings keep its meaning (depart/leave 0.989, begin/start 0.996,
# final/last 0.989, month/monthly 0.991); the minimal pairs of tests/fewshot_pairs.json' tuned
# part change it more (last/first 0.975, end/start 0.971, minimum/maximum 0.970, adult/child 0.933).
SAME_IN_CONTEXT = 0.985
# Only a stored word at least this close to the question's word (a word alone) is tried as its swap.
SWAP_MIN_WORD = 0.5

# What kind of answer a question asks for, from its question words (stopwords to the word score):
# "When does breakfast begin?" is not answered by the breakfast price, however alike the words.
QUESTION_KINDS = (
    ("how much", "amount"), ("how many", "count"), ("how long", "duration"), ("how far", "distance"),
    ("how old", "age"), ("what time", "time"), ("what date", "time"), ("what day", "time"), ("which day", "time"),
    ("when", "time"), ("who", "person"), ("whom", "person"), ("whose", "person"), ("where", "place"), ("why", "reason"),
)  # fmt: skip
_KIND = re.compile(r"\b(" + "|".join(re.escape(phrase) for phrase, _ in QUESTION_KINDS) + r")\b", re.IGNORECASE)
# Contrastive words that name an event of their own: added alone, they still change the question
# ("When does breakfast *begin*?" against "How much is breakfast?").
EVENTS = frozenset("open opens opening close closes closing start starts end ends begin begins finish finishes "
                   "arrive arrives leave leaves".split())  # noqa: SIM905


# For a kind of answer the stored question does not name by a question word ("What does X cost?"),
# what in its question or answer shows that it gives that kind: a time, a date, a day, a price.
KIND_EVIDENCE = {
    "time": re.compile(
        r"\b\d{1,2}[:.]\d{2}\b|\b\d{1,2}\s*(am|pm)\b|\b(1[5-9]|20)\d{2}\b|\b(time|times|early|earliest|late|latest|"
        r"morning|afternoon|evening|night|noon|midnight|today|tomorrow|monday|tuesday|wednesday|thursday|friday|"
        r"saturday|sunday|weekdays?|weekends?|january|february|march|april|may|june|july|august|september|october|"
        r"november|december|spring|summer|autumn|winter|date|day|days|year|month|week)\b",
        re.IGNORECASE,
    ),
    "amount": re.compile(
        r"[$€£¥]|\b(cost|costs|price|prices|pay|paid|fee|fees|free|euros?|dollars?|pounds?|crowns?|cents?|charge|charges)\b",
        re.IGNORECASE,
    ),
}


def asked_kind(text: str) -> str | None:
    """The kind of answer `text` asks for (QUESTION_KINDS), from its first question word; None if none says."""
    found = _KIND.search(text)
    return dict(QUESTION_KINDS)[found.group(1).casefold()] if found else None


_WORD = re.compile(r"[^\W_]+(?:-[^\W_]+)*")  # "check-in" is one word, "what's" two (the "s" is dropped)


@dataclass(frozen=True)
class Word:
    text: str  # as written
    stem: str
    is_name: bool
    is_number: bool


def words_of(text: str) -> list[Word]:
    """The content words of `text`, each with its Porter stem (the FTS5 index's), without repeats."""
    names = {n.casefold() for n in name_words(text)}
    found: dict[str, Word] = {}
    for match in _WORD.finditer(text):
        raw = match.group()
        folded = raw.casefold()
        if folded in IGNORED or (len(raw) == 1 and not raw.isdigit()):
            continue
        stem = porter_stem(folded.replace("-", "")) or folded
        found.setdefault(stem, Word(raw, stem, folded in names, any(c.isdigit() for c in raw)))
    return list(found.values())


@dataclass
class Coverage:
    """How a question's words stand against a stored question and its answer."""

    uncovered: list[str] = field(default_factory=list)  # the question's words neither of them has

    @property
    def covered(self) -> bool:
        return not self.uncovered


def framing_kind(word: Word) -> str | None:
    return FRAMING.get(word.text.casefold())


def coverage(question: str, stored_question: str, stored_answer: str, embedder: Any) -> Coverage:
    """Which of `question`'s content words the stored question and answer do not have (see the module doc)."""
    theirs = words_of(stored_question) + words_of(stored_answer)
    stems = {w.stem for w in theirs}
    mine = words_of(question)
    own_stems = {w.stem for w in mine}
    result = Coverage()
    mine_kind, their_kind = asked_kind(question), asked_kind(stored_question)
    if mine_kind and their_kind and mine_kind != their_kind:
        result.uncovered.append(f"({mine_kind}, not {their_kind})")
    elif mine_kind in KIND_EVIDENCE and their_kind is None:
        if not KIND_EVIDENCE[mine_kind].search(stored_question + " " + stored_answer):
            result.uncovered.append(f"({mine_kind}, not said)")
    # Words the stored texts have and the question lacks: what a word of the question may stand for.
    partners = [
        w.text for w in theirs
        if not (w.is_number or w.is_name or w.text.casefold() in CONTRASTIVE) and w.stem not in own_stems
    ]
    kinds = {framing_kind(w) for w in theirs} | {"generic"}
    their_contrasts = {w.stem for w in theirs if w.text.casefold() in CONTRASTIVE} - own_stems
    for word in mine:
        if word.stem in stems:
            continue
        if word.is_number or word.is_name:
            result.uncovered.append(word.text)
        elif word.text.casefold() in CONTRASTIVE:
            if their_contrasts or word.text.casefold() in EVENTS:  # "open" where they say "close"
                result.uncovered.append(word.text)
        elif framing_kind(word) is not None:
            if framing_kind(word) not in kinds:  # a framing word of a kind they do not ask for
                result.uncovered.append(word.text)
        elif _swap(word.text, question, partners, embedder) is None:
            result.uncovered.append(word.text)
    return result


def _swap(word: str, question: str, partners: list[str], embedder: Any) -> str | None:
    """The stored word that `word` stands for (a near-identical word, or one that leaves the question
    meaning the same when swapped in), or None."""
    if not partners:
        return None
    vectors = embedder.vectors([word, *partners])
    similarities = (vectors[1:] @ vectors[0]).tolist()
    best = max(range(len(partners)), key=similarities.__getitem__)
    if similarities[best] >= SAME_WORD:
        return partners[best]
    if similarities[best] < SWAP_MIN_WORD:
        return None
    swapped = re.sub(rf"(?<![\w-]){re.escape(word)}(?![\w-])", partners[best], question)
    return partners[best] if embedder.similarity(question, swapped) >= SAME_IN_CONTEXT else None
