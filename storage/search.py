"""Relevance for few-shot retrieval, in pure Python (no SQL): the content words
of a question and a score for how well an example's input matches it.

FTS5 finds the candidates; this module decides which of them are relevant.
bm25 alone cannot: its scores depend on how many examples there are (with one
or two examples every idf is tiny), and it rewards a shared "what is the" as
readily as a shared name. The score here is a cosine between the two sets of
content words (stopwords removed, Porter stems), each word weighted by its
rarity among the approved examples, so it means the same with 1 example and
with 1,000, and 0 means nothing in common.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

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
        stem = porter_stem(word.casefold())
        out[stem] = max(out.get(stem, 1.0), NAME_EMPHASIS if is_name else 1.0)
    return out


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


def relevance(query: Mapping[str, float], doc: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Cosine between two texts' terms, each weighted by rarity times emphasis: 0 (nothing shared) to 1."""
    if not query or not doc:
        return 0.0
    shared = sum(query[t] * doc[t] * weights[t] ** 2 for t in query.keys() & doc.keys())
    norm = math.sqrt(sum((query[t] * weights[t]) ** 2 for t in query) * sum((doc[t] * weights[t]) ** 2 for t in doc))
    return shared / norm if norm else 0.0


# -- the Porter stemmer (M. F. Porter, 1980), as SQLite's FTS5 "porter" tokenizer applies it ----------


def _is_consonant(word: str, i: int) -> bool:
    ch = word[i]
    if ch in "aeiou":
        return False
    if ch == "y":
        return i == 0 or not _is_consonant(word, i - 1)
    return True


def _measure(stem: str) -> int:
    """m in [C](VC)^m[V]: how many vowel-consonant sequences the stem has."""
    m, previous_vowel = 0, False
    for i in range(len(stem)):
        vowel = not _is_consonant(stem, i)
        if previous_vowel and not vowel:
            m += 1
        previous_vowel = vowel
    return m


def _has_vowel(stem: str) -> bool:
    return any(not _is_consonant(stem, i) for i in range(len(stem)))


def _double_consonant(word: str) -> bool:
    return len(word) >= 2 and word[-1] == word[-2] and _is_consonant(word, len(word) - 1)


def _cvc(word: str) -> bool:
    """Ends consonant-vowel-consonant, the last not w, x or y (as in hop, not in hoop or snow)."""
    n = len(word)
    return (
        n >= 3
        and _is_consonant(word, n - 3)
        and not _is_consonant(word, n - 2)
        and _is_consonant(word, n - 1)
        and word[-1] not in "wxy"
    )


def _replace(word: str, rules: Iterable[tuple[str, str]], min_measure: int) -> str:
    """Apply the first rule whose suffix the word ends with, if the stem's measure allows."""
    for suffix, replacement in rules:
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            return stem + replacement if _measure(stem) > min_measure else word
    return word


_STEP2 = (
    ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
    ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"),
    ("ization", "ize"), ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"),
    ("fulness", "ful"), ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"),
    ("logi", "log"),
)  # fmt: skip
_STEP3 = (
    ("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""), ("ness", ""),
)  # fmt: skip
_STEP4 = (
    "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism",
    "ate", "iti", "ous", "ive", "ize",
)  # fmt: skip


def porter_stem(word: str) -> str:
    """The Porter stem of a lower-case word: connect, connected, connecting, connection → connect."""
    if len(word) <= 2 or not word.isalpha():
        return word
    # Step 1a: plurals.
    if word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("ies"):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    # Step 1b: -eed, -ed, -ing.
    if word.endswith("eed"):
        if _measure(word[:-3]) > 0:
            word = word[:-1]
    else:
        for suffix in ("ed", "ing"):
            if word.endswith(suffix) and _has_vowel(word[: -len(suffix)]):
                word = word[: -len(suffix)]
                if word.endswith(("at", "bl", "iz")):
                    word += "e"
                elif _double_consonant(word) and word[-1] not in "lsz":
                    word = word[:-1]
                elif _measure(word) == 1 and _cvc(word):
                    word += "e"
                break
    # Step 1c: a final y after a vowel-bearing stem becomes i.
    if word.endswith("y") and _has_vowel(word[:-1]):
        word = word[:-1] + "i"
    word = _replace(word, _STEP2, 0)
    word = _replace(word, _STEP3, 0)
    # Step 4: strip a suffix from a long enough stem (-ion only after s or t).
    for suffix in _STEP4:
        if word.endswith(suffix):
            stem = word[: -len(suffix)]
            if _measure(stem) > 1 and (suffix != "ion" or stem.endswith(("s", "t"))):
                word = stem
            break
    # Step 5: a final e, and a final double l.
    if word.endswith("e"):
        stem = word[:-1]
        m = _measure(stem)
        if m > 1 or (m == 1 and not _cvc(stem)):
            word = stem
    if word.endswith("ll") and _measure(word) > 1:
        word = word[:-1]
    return word
