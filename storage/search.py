"""Few-shot ranking, all of it: the content words of a question, a score for
how well an example's input matches it, rank() and the MIN_SCORE threshold.
No SQL but the stemmer's private table: the store fetches the candidates and
the word counts from its FTS5 index and calls rank().

FTS5 finds the candidates; this module decides which of them are relevant.
bm25 alone cannot: its scores depend on how many examples there are (with one
or two examples every idf is tiny), and it rewards a shared "what is the" as
readily as a shared name. The score here is a cosine between the two sets of
content words (stopwords removed, stemmed by FTS5's own Porter tokenizer),
each word weighted by its rarity among the approved examples, so it means the
same with 1 example and with 1,000, and 0 means nothing in common.
"""

from __future__ import annotations

import functools
import math
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping
from typing import Any

# Function words, question words and chat filler. They say how a question is
# asked, not what it is about, so they never make an example relevant.
STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any anyone anything are aren as at be because been
    before being below between both but by can cannot could couldn did didn do does doesn doing don done down
    during each either else ever every few for from further get gets getting give go goes going got had hadn
    has hasn have haven having he her here hers herself him himself his how however i if in into is isn it its
    itself just know let like ll make many may me might mine more most much must mustn my myself need no nor not
    now of off on once one only or other ought our ours ourselves out over own please re really same say says
    shall shan she should shouldn so some something such tell than thank thanks that the their theirs them
    themselves then there these they thing things this those through to too under until up upon us use used
    ve very via want was wasn way we well were weren what whats when whence where whether which while who whom
    whose why will with won would wouldn yes yet you your yours yourself yourselves hi hello hey ok okay
    """.split()
)

_WORD = re.compile(r"[^\W_]+")
_SENTENCE_END = re.compile(r"[.?!:;\n]")

# How much more a name counts than another word. A capitalised word inside a
# sentence is most likely a name (Zorvania, Fluxboard), and names are what
# tell "the capital of Zorvania" from "the capital of France".
NAME_EMPHASIS = 3.0


def query_words(text: str) -> list[str]:
    """The words of `text` that carry meaning (lower case, stopwords and single letters left out), without repeats."""
    return list(dict.fromkeys(w.casefold() for w, _ in _meaningful(text)))


def content_words(text: str) -> list[str]:
    """The Porter stems of `text`'s meaningful words, as the FTS5 index holds them, without repeats."""
    return list(terms(text))


def terms(text: str) -> dict[str, float]:
    """Stem -> emphasis for each meaningful word: NAME_EMPHASIS for a name, else 1."""
    out: dict[str, float] = {}
    for word, is_name in _meaningful(text):
        for stem in _STEMS.of(word.casefold()):
            out[stem] = max(out.get(stem, 1.0), NAME_EMPHASIS if is_name else 1.0)
    return out


def name_words(text: str) -> list[str]:
    """The words of `text` that look like names (capitalised inside a sentence), as written, without repeats."""
    return list(dict.fromkeys(w for w, is_name in _meaningful(text) if is_name))


def _meaningful(text: str) -> list[tuple[str, bool]]:
    """(word, looks like a name) for each word that is not a stopword or a single letter."""
    found, previous_end = [], 0
    for match in _WORD.finditer(text):
        word = match.group()
        starts_sentence = previous_end == 0 or bool(_SENTENCE_END.search(text, previous_end, match.start()))
        previous_end = match.end()
        folded = word.casefold()
        if (len(word) > 1 or word.isdigit()) and folded not in STOPWORDS:
            found.append((word, word[0].isupper() and not starts_sentence))
    return found


# Rarity is judged as if this many more examples, holding none of the words,
# had been seen: with few examples no word looks very common or very rare.
PRIOR_EXAMPLES = 10


def idf(doc_freq: int, total: int) -> float:
    """The rarity weight of a word found in `doc_freq` of `total` examples: ln((N + 1 + prior) / (df + 1)).

    It behaves with few examples: with one, every word weighs 1.8 to 2.5 (the
    score is then close to plain word overlap). Among 20 help-desk examples
    that all name the product, the product's name weighs 0.4 and a word only
    one example has 2.7; among 1,000, a word 300 share weighs 1.2 and a word
    one has 6.2.
    """
    return math.log((total + 1 + PRIOR_EXAMPLES) / (doc_freq + 1))


# The least relevance for an example to be put into a prompt as a demonstration.
# Measured with benchmarks/measure_retrieval.py on tests/fewshot_facts.json.
MIN_SCORE = 0.3


def rank(
    query: str,
    candidates: list[dict[str, Any]],
    doc_freq: Callable[[list[str]], Mapping[str, int]],
    total: int,
    *,
    min_score: float = 0.0,
) -> list[dict[str, Any]]:
    """`candidates` (rows with an `input_text`) scored against `query`, best first, each with its `score`.

    `doc_freq(terms)` says how many examples hold each term and `total` how many
    there are (the store reads both from the FTS5 index). Rows scoring 0, or
    below `min_score`, are left out; equal scores keep the candidates' order.
    """
    query_terms = terms(query)
    doc_terms = [terms(row["input_text"]) for row in candidates]
    vocabulary = sorted(set(query_terms).union(*doc_terms))
    counts = doc_freq(vocabulary) if vocabulary else {}
    weights = {t: idf(counts.get(t, 0), total) for t in vocabulary}
    scored = []
    for row, row_terms in zip(candidates, doc_terms):
        row["score"] = relevance(query_terms, row_terms, weights)
        if row["score"] > 0 and row["score"] >= min_score:
            scored.append(row)
    return sorted(scored, key=lambda row: -row["score"])  # a stable sort: the candidates' order breaks ties


def relevance(query: Mapping[str, float], doc: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Cosine between two texts' terms, each weighted by rarity times emphasis: 0 (nothing shared) to 1."""
    if not query or not doc:
        return 0.0
    shared = sum(query[t] * doc[t] * weights[t] ** 2 for t in query.keys() & doc.keys())
    norm = math.sqrt(sum((query[t] * weights[t]) ** 2 for t in query) * sum((doc[t] * weights[t]) ** 2 for t in doc))
    return shared / norm if norm else 0.0


# -- stems, from SQLite's own Porter tokenizer --------------------------------------------


class _Fts5Stems:
    """The stems FTS5's "porter" tokenizer gives a word, read from a private in-memory FTS5 table.

    Asking SQLite rather than re-implementing Porter means retrieval and the
    examples_fts index (migrations.m002_examples_fts, tokenize="porter") cannot
    disagree, diacritics and all: "Café" is the index's "cafe".
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(f"create virtual table words using fts5(word, tokenize='{FTS_TOKENIZER}')")
        self._db.execute("create virtual table stems using fts5vocab(words, 'instance')")
        self._lock = threading.Lock()

    @functools.lru_cache(maxsize=65536)  # noqa: B019 (one instance, kept for the process's life)
    def of(self, word: str) -> tuple[str, ...]:
        """The index terms of one word: usually one stem; none for a word FTS5 does not index."""
        with self._lock:
            self._db.execute("insert into words(rowid, word) values (1, ?)", [word])
            found = tuple(term for (term,) in self._db.execute("select term from stems order by offset"))
            self._db.execute("delete from words")
        return found


# The tokenizer of the examples_fts index (storage/migrations.py m002); the stems must come from the same one.
FTS_TOKENIZER = "porter"
_STEMS = _Fts5Stems()


def porter_stem(word: str) -> str:
    """The Porter stem of one word, exactly as the FTS5 index holds it (space-separated if it holds several)."""
    return " ".join(_STEMS.of(word.casefold()))
