"""IOI prompts: templates, roles, corruptions, validated token-aligned pairs.

An IOI ("indirect object identification") prompt names two people, mentions one
of them a second time and ends just before the other one should be named again:

    "When John and Mary went to the store, Mary gave a drink to"  ->  " John"

Roles (the names the literature uses):

* ``IO``  - the indirect object, mentioned once; the right answer (John).
* ``S1``  - the subject's first mention (Mary in "John and Mary").
* ``S2``  - the subject's second mention (Mary in "Mary gave").
* ``END`` - the last token, where the answer is predicted ("to").

``ioi_pairs`` and ``pairs_from_prompt`` turn them into validated, token-aligned
``PromptPairs`` (``helpers.data.pairs``, re-exported here), one role per position in
every pair of a set.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from helpers.base.validate import as_count, as_index, check_memory, norm_index
from helpers.data.pairs import (PromptError, PromptPairs, check_in_vocabulary, check_text,
                                make_pairs, single_token_id, single_token_words, token_ids)

__all__ = [
    "NAMES", "PLACES", "OBJECTS", "TEMPLATES", "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES", "FILLERS",
    "ROLES", "PromptError", "IOIPrompt", "PromptPairs", "ioi_prompt", "random_ioi_prompts",
    "corrupt", "ioi_pairs", "pairs_from_prompt", "make_pairs", "single_token_id", "single_token_words", "token_ids",
    "check_in_vocabulary",
]

ROLES = ("IO", "S1", "S2", "END")
Corruption = Literal["s2_swap", "answer_swap", "abc"]
CORRUPTIONS: tuple[str, ...] = ("s2_swap", "answer_swap", "abc")
Order = Literal["ABBA", "BABA"]
#: Memory one prompt pair may take while a set is built (texts, spans, token lists): measured
#: at a peak of 1.7 kB per pair with the bundled tokenizer (tracemalloc, 2,000 pairs), bounded
#: at 4 kB for longer templates and other tokenizers; a random prompt alone takes 0.6 kB.
#: What bounds ``n`` (``validate.check_memory``).
PAIR_BYTES = 4096

#: Names that are single tokens both for the bundled model and for GPT-2 (" John").
NAMES: tuple[str, ...] = (
    "John", "Mary", "Tom", "Anna", "James", "Kate", "Paul", "Lisa", "Mark", "Emma",
    "David", "Sarah", "Peter", "Laura", "Chris", "Alice", "Daniel", "Rachel", "Michael",
    "Helen", "Robert", "Julia", "Steven", "Grace",
)
PLACES: tuple[str, ...] = (
    "store", "garden", "school", "park", "office", "station", "restaurant", "house",
    "hospital", "market",
)
OBJECTS: tuple[str, ...] = (
    "drink", "book", "ring", "bone", "basketball", "computer", "necklace", "flower",
    "snack", "letter",
)

# {A} and {B} are the two names in order of first mention, {S} is the subject's
# second mention.  ABBA order puts IO first ({A} = IO), BABA puts S first.
# The bundled model was trained on these lists (helpers/organism/train_ioi.py): changing
# NAMES, PLACES, OBJECTS, the templates or FILLERS changes what a retrain produces.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "After {A} and {B} went to the {place}, {S} gave a {object} to",
    "Then, {A} and {B} went to the {place}. {S} gave a {object} to",
    "While {A} and {B} were working at the {place}, {S} gave a {object} to",
    "When {A} and {B} got a {object} at the {place}, {S} decided to give it to",
    "After the lunch, {A} and {B} went to the {place}. {S} gave a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
    "{A} and {B} had a lot of fun at the {place}. {S} gave a {object} to",
    "While {A} and {B} were walking to the {place}, {S} gave a {object} to",
    "Then, {A} and {B} were thinking about going to the {place}. {S} wanted to give a {object} to",
    "When {A} and {B} arrived at the {place}, {S} handed a {object} to",
    "Later, {A} and {B} met at the {place}, and {S} sent a {object} to",
)
#: Templates the bundled model never saw in training (built from words it did see).
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "After {A} and {B} arrived at the {place}, {S} sent a {object} to",
    "Then, {A} and {B} were working at the {place}. {S} handed a {object} to",
    "While {A} and {B} had a lunch at the {place}, {S} wanted to give it to",
)
TEMPLATES: tuple[str, ...] = TRAIN_TEMPLATES + HELDOUT_TEMPLATES

#: Sentences without names, put in front of training prompts (0-2 of them) so the
#: bundled model cannot rely on absolute positions.
FILLERS: tuple[str, ...] = (
    "It was a long and busy day.",
    "The weather was nice that morning.",
    "Everyone was in a good mood.",
    "The city was quiet after the rain.",
    "It was the last day of the week.",
    "Nobody had much time for lunch.",
    "The sun was out and the sky was clear.",
    "A friend sent a letter from the station.",
    "The teacher handed a book to a student.",
    "Someone was thinking about the weekend.",
    "The house was close to the park.",
    "There was a lot to do at the office.",
)

_NAME_SLOTS = ("{A}", "{B}", "{S}")


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI prompt as text, with its names and the character span of each role.

    ``spans`` maps "IO", "S1" and "S2" to ``(start, end)`` character offsets
    in ``text``.  ``answer`` is the IO name, ``distractor`` the subject name.
    """

    text: str
    io: str
    s: str
    template: str
    order: str  # "ABBA" (IO first) or "BABA" (S first)
    spans: dict[str, tuple[int, int]] = field(compare=False)

    @property
    def answer(self) -> str:
        return self.io

    @property
    def distractor(self) -> str:
        return self.s


def ioi_prompt(template: str, io: str, s: str, order: Order = "ABBA", place: str = "store",
               object: str = "drink", s2: str | None = None) -> IOIPrompt:
    """Fill a template.  ``order="ABBA"`` puts IO first ("John and Mary ..., Mary"),
    ``"BABA"`` puts the subject first ("Mary and John ..., Mary").  ``s2`` overrides
    the name used at the S2 slot (how corruptions are built)."""
    if order not in ("ABBA", "BABA"):
        raise PromptError(f"order must be 'ABBA' or 'BABA', got {order!r}")
    if io == s:
        raise PromptError(f"IO and S must be different names, got {io!r} twice")
    first, second = (io, s) if order == "ABBA" else (s, io)
    values = {"{A}": first, "{B}": second, "{S}": s if s2 is None else s2}
    text, spans, rest = "", {}, template.replace("{place}", place).replace("{object}", object)
    role_of = {"{A}": "IO" if order == "ABBA" else "S1", "{B}": "S1" if order == "ABBA" else "IO",
               "{S}": "S2"}
    for piece in re.split(r"(\{A\}|\{B\}|\{S\})", rest):
        if piece in values:
            spans[role_of[piece]] = (len(text), len(text) + len(values[piece]))
            text += values[piece]
        else:
            text += piece
    if set(spans) != {"IO", "S1", "S2"}:
        raise PromptError(f"template must contain {{A}}, {{B}} and {{S}} once each: {template!r}")
    return IOIPrompt(text=text, io=io, s=s, template=template, order=order, spans=spans)


def random_ioi_prompts(n: int, seed: int = 0, templates: Sequence[str] = TRAIN_TEMPLATES,
                       names: Sequence[str] = NAMES, places: Sequence[str] = PLACES,
                       objects: Sequence[str] = OBJECTS,
                       name_pairs: Sequence[tuple[str, str]] | None = None) -> list[IOIPrompt]:
    """``n`` random IOI prompts (both orders, random names, places, objects).

    ``name_pairs`` restricts the (unordered) pairs of names used; each pair is
    used with a random choice of which name is IO.
    """
    n, seed = as_count(n, "n"), as_index(seed, "seed")
    check_memory(n * PAIR_BYTES / 2, f"n={n} prompts", "ask for fewer prompts")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        io, s = _draw_names(rng, names, name_pairs)
        out.append(ioi_prompt(rng.choice(list(templates)), io, s, rng.choice(("ABBA", "BABA")),
                              rng.choice(list(places)), rng.choice(list(objects))))
    return out


def _draw_names(rng: random.Random, names: Sequence[str],
                name_pairs: Sequence[tuple[str, str]] | None) -> tuple[str, str]:
    """(IO, S): two distinct names, or one of ``name_pairs`` in a random order."""
    if name_pairs is None:
        io, s = rng.sample(list(names), 2)
        return io, s
    io, s = rng.choice(list(name_pairs))
    return (s, io) if rng.random() < 0.5 else (io, s)


def corrupt(prompt: IOIPrompt, corruption: Corruption = "s2_swap", rng: random.Random | None = None,
            names: Sequence[str] = NAMES) -> IOIPrompt:
    """The corrupted partner of ``prompt``.

    * ``"s2_swap"``: S2 becomes the IO name ("..., John gave a drink to"): the
      prompt now points at the other name.  One token differs; the answer flips.
    * ``"answer_swap"``: IO and S exchanged everywhere; the answer flips.
    * ``"abc"``: the three name slots get three fresh names (neither IO nor S):
      the information is erased rather than flipped.
    """
    place_obj = _place_object(prompt)
    if corruption == "s2_swap":
        return ioi_prompt(prompt.template, prompt.io, prompt.s, prompt.order, *place_obj, s2=prompt.io)
    if corruption == "answer_swap":
        return ioi_prompt(prompt.template, prompt.s, prompt.io, prompt.order, *place_obj)
    if corruption == "abc":
        rng = rng or random.Random(0)
        fresh = [n for n in names if n not in (prompt.io, prompt.s)]
        a, b, c = rng.sample(fresh, 3)
        p = ioi_prompt(prompt.template, a, b, prompt.order, *place_obj, s2=c)
        return p
    raise PromptError(f"unknown corruption {corruption!r}; choose one of {CORRUPTIONS}")


def _place_object(prompt: IOIPrompt) -> tuple[str, str]:
    """Recover the place and object words used to fill ``prompt``'s template."""
    pattern = re.escape(prompt.template)
    for slot in _NAME_SLOTS:
        pattern = pattern.replace(re.escape(slot), r"\w+")
    pattern = pattern.replace(re.escape("{place}"), r"(?P<place>\w+)", 1)
    pattern = pattern.replace(re.escape("{place}"), r"(?P=place)")
    pattern = pattern.replace(re.escape("{object}"), r"(?P<object>\w+)", 1)
    pattern = pattern.replace(re.escape("{object}"), r"(?P=object)")
    m = re.fullmatch(pattern, prompt.text)
    groups = m.groupdict() if m else {}
    return groups.get("place") or "store", groups.get("object") or "drink"


def ioi_pairs(tokenizer: Any, n: int = 8, corruption: Corruption = "s2_swap", seed: int = 0,
              template: int | str = 0, order: Order = "ABBA", names: Sequence[str] = NAMES,
              name_pairs: Sequence[tuple[str, str]] | None = None) -> PromptPairs:
    """``n`` IOI clean/corrupted pairs from one template and one name order,
    reproducible from ``seed``.

    ``order``: ``"ABBA"`` (IO named first: "John and Mary ..., Mary ... to") or
    ``"BABA"`` ("Mary and John ..., Mary ... to").  One order per set keeps each
    role at one token position; build one set per order to average over both.

    ``template``: an index into ``TEMPLATES`` or a template string with {A},
    {B}, {S}, and optionally {place} and {object}.  Names, places and objects
    that are not single tokens for ``tokenizer`` are skipped, so every pair has
    the same length.
    """
    if corruption not in CORRUPTIONS:
        raise PromptError(f"unknown corruption {corruption!r}; choose one of {CORRUPTIONS}")
    n = as_count(n, "n")
    seed = as_index(seed, "seed")
    check_memory(n * PAIR_BYTES, f"n={n} prompt pairs", "ask for fewer pairs (a few hundred "
                 "already give tight intervals)")
    if not isinstance(template, str):
        template = TEMPLATES[norm_index(template, len(TEMPLATES), "template", "templates in "
                                        "helpers.TEMPLATES")]
    rng = random.Random(seed)
    names_ok = single_token_words(tokenizer, names)
    if len(names_ok) < (5 if corruption == "abc" else 2):
        raise PromptError(f"too few single-token names for this tokenizer: {names_ok}")
    places, objects = single_token_words(tokenizer, PLACES), single_token_words(tokenizer, OBJECTS)
    clean, corrupted = [], []
    for i in range(n):
        io, s = _draw_names(rng, names_ok, name_pairs)
        p = ioi_prompt(template, io, s, order, rng.choice(places), rng.choice(objects))
        clean.append(p)
        corrupted.append(corrupt(p, corruption, rng, names_ok))
    return make_pairs(tokenizer, [p.text for p in clean], [p.text for p in corrupted],
                      [p.io for p in clean], [p.s for p in clean], [p.spans for p in clean],
                      corruption=corruption)


def pairs_from_prompt(tokenizer: Any, text: str, io: str | None = None, s: str | None = None,
                      corruption: Corruption = "s2_swap", names: Sequence[str] = NAMES,
                      seed: int = 0) -> PromptPairs:
    """A pair from a learner's own clean IOI prompt.

    The subject is the name mentioned twice and IO the name mentioned once
    (found among ``names`` unless given).  The corrupted prompt replaces the
    second subject mention with IO (``"s2_swap"``), exchanges the two names
    (``"answer_swap"``), or puts three fresh names in (``"abc"``).
    """
    check_text(text)
    words = [(m.group(), m.start(), m.end()) for m in re.finditer(r"\w+", text)]
    if s is None or io is None:
        counts: dict[str, int] = {}
        for w, _, _ in words:
            if w in names:
                counts[w] = counts.get(w, 0) + 1
        twice = [w for w, c in counts.items() if c == 2]
        once = [w for w, c in counts.items() if c == 1]
        s = s or (twice[0] if len(twice) == 1 else None)
        io = io or (once[0] if len(once) == 1 else None)
        if s is None or io is None:
            raise PromptError(
                f"could not find the roles in {text!r}: an IOI prompt needs one name twice (the "
                f"subject) and one name once (the answer), e.g. 'When John and Mary went to the "
                f"store, Mary gave a drink to'. Found names {counts or 'none'}; pass io= and s= "
                f"for names outside helpers.NAMES.")
    s_hits = [(a, b) for w, a, b in words if w == s]
    io_hits = [(a, b) for w, a, b in words if w == io]
    if len(s_hits) != 2 or len(io_hits) != 1:
        raise PromptError(f"{s!r} must appear exactly twice and {io!r} once in {text!r}")
    spans = {"S1": s_hits[0], "S2": s_hits[1], "IO": io_hits[0]}
    if not spans["IO"][0] < spans["S2"][0]:
        raise PromptError(f"the answer {io!r} must be mentioned before the second {s!r}")
    if corruption == "s2_swap":
        bad = text[:spans["S2"][0]] + io + text[spans["S2"][1]:]
    elif corruption == "answer_swap":
        bad = "".join(io if w == s else s if w == io else w for w in re.split(r"(\w+)", text))
    elif corruption == "abc":
        fresh = random.Random(seed).sample([x for x in names if x not in (io, s)], 3)
        repl = {spans["IO"]: fresh[0], spans["S1"]: fresh[1], spans["S2"]: fresh[2]}
        bad, last = "", 0
        for (a, b), w in sorted(repl.items()):
            bad, last = bad + text[last:a] + w, b
        bad += text[last:]
    else:
        raise PromptError(f"unknown corruption {corruption!r}; choose one of {CORRUPTIONS}")
    return make_pairs(tokenizer, [text], [bad], [io], [s], [spans], corruption=corruption)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
