"""The phrase grammar of the wide (LRW/LRS2-shaped) set: thousands of short news-style sentences.

LRW and LRS2 are BBC speech: hundreds of words said by hundreds of speakers in everyday sentences. Our
stand-in draws sentences from a small grammar (templates with word slots) over a news vocabulary. It is a
pure function of the seed, so the same params give the same phrases on every machine.

Held-out sentences must be unseen in a strong sense: every eighth word of each open word class is reserved
for them, so each held-out phrase holds at least one word no training phrase contains (and no held-out
phrase equals a training phrase or a sentence of the MEAD-shaped corpus).
"""

from __future__ import annotations

import math
import re

import numpy as np

from pipeline.core.errors import InputError
from pipeline.corpus.sentences import SENTENCES

RESERVE_EVERY = 8  # every eighth word of each open class is kept for held-out phrases
STALL_DRAWS = 20_000  # draws in a row without a new phrase before giving up

WORDS: dict[str, tuple[str, ...]] = {
    "noun": (
        "report", "budget", "council", "market", "bridge", "station", "hospital", "school", "village", "harbour",
        "museum", "factory", "airport", "library", "garden", "river", "mountain", "island", "border", "highway",
        "project", "contract", "proposal", "election", "campaign", "debate", "decision", "policy", "treaty",
        "agreement", "company", "minister", "committee", "judge", "police", "doctor", "teacher", "farmer",
        "pilot", "engineer", "team", "player", "coach", "crowd", "match", "season", "result", "record", "storm",
        "flood", "fire", "weather", "summer", "winter", "morning", "evening", "train", "ship", "plane", "lorry",
        "road", "tunnel", "tower", "church", "palace", "office", "building", "house", "family", "child",
        "woman", "man", "group", "union", "strike", "price", "cost", "tax", "wage", "job", "plan", "survey",
        "study", "figure", "number", "level", "rate", "crisis", "problem", "question", "answer", "statement",
        "speech", "letter", "message", "story", "picture", "film", "concert", "festival", "game", "prize",
        "medal", "trophy", "boat", "beach", "forest", "valley", "city", "capital", "county", "region",
        "network", "system", "service", "vaccine", "energy", "power", "water", "food", "bread", "coffee",
    ),
    "plural": (
        "people", "voters", "workers", "officials", "leaders", "members", "experts", "families", "children",
        "students", "patients", "farmers", "drivers", "players", "fans", "prices", "numbers", "costs", "jobs",
        "houses", "schools", "roads", "trains", "ships", "votes", "seats", "talks", "plans", "changes",
        "reports", "troops", "doctors", "nurses", "teachers", "police", "banks", "markets", "shares", "homes",
        "cities",
    ),
    "adjective": (
        "new", "old", "big", "small", "major", "local", "national", "public", "private", "early", "late",
        "final", "first", "last", "strong", "weak", "high", "low", "long", "short", "clear", "serious",
        "simple", "difficult", "important", "famous", "popular", "recent", "huge", "tiny", "bright", "dark",
        "quiet", "busy", "empty", "full", "cheap", "expensive", "modern", "ancient", "northern", "southern",
        "western", "eastern", "british", "european", "young", "senior", "careful", "sudden",
    ),
    "verb_past": (
        "opened", "closed", "approved", "rejected", "announced", "cancelled", "changed", "reached", "visited",
        "left", "joined", "built", "bought", "sold", "found", "lost", "won", "signed", "started", "finished",
        "checked", "moved", "planned", "blamed", "backed", "hit", "raised", "cut", "passed", "delayed",
        "welcomed", "watched", "reported", "described", "questioned", "praised", "warned", "believed",
        "expected", "admitted",
    ),
    "verb_base": (
        "open", "close", "approve", "reject", "announce", "cancel", "change", "reach", "visit", "leave", "join",
        "build", "buy", "sell", "find", "win", "sign", "start", "finish", "check", "move", "plan", "back",
        "raise", "cut", "pass", "delay", "welcome", "watch", "report",
    ),
    "verb_intransitive": (
        "arrived", "returned", "collapsed", "recovered", "improved", "increased", "fell", "rose", "failed",
        "stopped", "waited", "voted", "spoke", "agreed", "resigned", "survived", "continued", "ended",
        "happened", "appeared",
    ),
    "say": ("said", "claimed", "argued", "warned", "announced", "confirmed", "suggested", "explained"),
    "name": (
        "the prime minister", "the president", "the mayor", "the chairman", "the spokesman", "the director",
        "the government", "the opposition", "the chancellor", "the bank", "the army", "the court", "the board",
        "the unions", "the scientists", "the manager", "Mister Brown", "Missus Patel", "Doctor Evans",
        "Professor Hughes", "Sarah Jones", "David Miller", "Maria Lopez", "James Cooper", "Anna Schmidt",
        "Peter Walsh", "Helen Murray", "Thomas Baker", "Laura Price", "Michael Adams",
    ),
    "place": (
        "London", "Paris", "Berlin", "Madrid", "Rome", "Dublin", "Glasgow", "Cardiff", "Belfast", "Leeds",
        "Bristol", "Manchester", "Liverpool", "Oxford", "Cambridge", "Brussels", "Geneva", "Vienna", "Athens",
        "Lisbon", "Boston", "Chicago", "Sydney", "Toronto", "Mumbai", "Tokyo", "Cairo", "Nairobi", "the north",
        "the south", "the capital", "the city centre", "the countryside", "the region", "parliament",
    ),
    "time": (
        "today", "yesterday", "this morning", "last night", "last week", "this year", "next month",
        "on Monday", "on Tuesday", "on Friday", "at the weekend", "in the spring", "in the autumn",
        "after the vote", "before the summit", "for the first time", "once again", "within hours",
        "over the summer", "earlier this week",
    ),
    "quantity": (
        "two", "three", "four", "five", "six", "ten", "twelve", "twenty", "thirty", "fifty", "a hundred",
        "several", "many", "some", "most", "few",
    ),
}
# Word classes whose words can be reserved for held-out phrases (the others are too small to split).
OPEN_CLASSES = ("noun", "plural", "adjective", "verb_past", "verb_base", "verb_intransitive", "place")

TEMPLATES: tuple[str, ...] = (
    "the {adjective} {noun} {verb_past} the {noun} {time}",
    "{name} {say} the {noun} was {adjective}",
    "{quantity} {plural} {verb_intransitive} {time}",
    "the {noun} in {place} {verb_intransitive} {time}",
    "{name} {verb_past} the {adjective} {noun} in {place}",
    "we will {verb_base} the {noun} {time}",
    "there is a {adjective} {noun} near the {noun}",
    "the {plural} are {adjective} {time}",
    "{time} the {noun} {verb_intransitive}",
    "did the {noun} {verb_base} the {adjective} {noun}?",
    "{name} {say} {quantity} {plural} {verb_intransitive}",
    "the {noun} {verb_past} {quantity} {plural} in {place}",
    "can they {verb_base} the {noun} in {place}?",
    "{quantity} {plural} {verb_past} the {noun} {time}",
    "the {adjective} {plural} {verb_intransitive} in {place}",
    "{name} {verb_intransitive} {time}",
)
_SLOT = re.compile(r"\{(\w+)\}")


def reserved_words() -> frozenset[str]:
    """The words only held-out phrases use: every RESERVE_EVERY-th entry of each open class, from the 4th
    (single words only, lower case: "the" of "the north" stays free)."""
    return frozenset(entry.lower() for cls in OPEN_CLASSES
                     for entry in WORDS[cls][3::RESERVE_EVERY] if " " not in entry)


def _fill(template: str, rng: np.random.Generator, pools: dict[str, tuple[str, ...]]) -> str:
    text = _SLOT.sub(lambda m: pools[m.group(1)][rng.integers(len(pools[m.group(1)]))], template)
    return text[0].upper() + text[1:] + ("" if text.endswith("?") else ".")


def _normal(text: str) -> str:
    return re.sub(r"[^a-z ]", "", text.lower()).strip()


def wide_phrases(n_train: int, n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """`n_train` training phrases (no reserved word) and `n_test` held-out phrases (each with at least one
    reserved word), all distinct and none a sentence of the MEAD-shaped corpus. Deterministic in `seed`."""
    reserved = reserved_words()
    train_pools = {cls: tuple(e for e in entries if reserved.isdisjoint(words_of(e))) for cls, entries in WORDS.items()}
    rng = np.random.default_rng([seed, 0x9A5E])
    taken = {_normal(s) for s in SENTENCES}
    out: dict[str, list[str]] = {"train": [], "test": []}
    for split, wanted, pools in (("train", n_train, train_pools), ("test", n_test, WORDS)):
        too_many = f"wide_corpus: the phrase grammar cannot make {wanted} distinct {split} phrases"
        if wanted > grammar_size(pools):  # more than the templates can ever make: fail before drawing
            raise InputError("params.yaml", too_many)
        misses = 0  # draws in a row that gave nothing new: the grammar is running out
        while len(out[split]) < wanted:
            if misses > STALL_DRAWS:
                raise InputError("params.yaml", too_many)
            text = _fill(TEMPLATES[rng.integers(len(TEMPLATES))], rng, pools)
            if split == "test" and reserved.isdisjoint(words_of(text)):
                continue  # a held-out phrase must hold a word no training phrase holds
            key = _normal(text)
            if key in taken:
                misses += 1
                continue
            taken.add(key)
            out[split].append(text)
            misses = 0
    return out["train"], out["test"]


def grammar_size(pools: dict[str, tuple[str, ...]]) -> int:
    """How many phrases the templates can make from `pools` (an upper bound: templates may overlap)."""
    return sum(math.prod(len(pools[slot]) for slot in _SLOT.findall(t)) for t in TEMPLATES)


def words_of(text: str) -> list[str]:
    return _normal(text).split()
