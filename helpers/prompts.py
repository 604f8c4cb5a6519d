"""IOI prompts: templates, roles, corruptions, validated token-aligned pairs.

An IOI ("indirect object identification") prompt names two people, mentions one
of them a second time and ends just before the other one should be named again:

    "When John and Mary went to the store, Mary gave a drink to"  ->  " John"

Roles (the names the literature uses):

* ``IO``  - the indirect object, mentioned once; the right answer (John).
* ``S1``  - the subject's first mention (Mary in "John and Mary").
* ``S2``  - the subject's second mention (Mary in "Mary gave").
* ``END`` - the last token, where the answer is predicted ("to").

A ``PromptPairs`` object holds N clean/corrupted prompt pairs, tokenized, all of
the same length and with their roles at the same token positions, so a patch
at "position 7" means the same role in every pair.  Everything that can go
wrong (different lengths, multi-token names, unknown words, misaligned roles)
raises a ``PromptError`` that says what was wrong and how to fix it.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

from helpers.validate import as_count, as_index, norm_index

__all__ = [
    "NAMES", "PLACES", "OBJECTS", "TEMPLATES", "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES", "FILLERS",
    "ROLES", "PromptError", "IOIPrompt", "PromptPairs", "ioi_prompt", "random_ioi_prompts",
    "corrupt", "ioi_pairs", "pairs_from_prompt", "make_pairs", "single_token_id", "single_token_words", "token_ids",
    "check_in_vocabulary",
]

ROLES = ("IO", "S1", "S2", "END")
Corruption = Literal["s2_swap", "answer_swap", "abc"]
CORRUPTIONS: tuple[str, ...] = ("s2_swap", "answer_swap", "abc")

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


class PromptError(ValueError):
    """A prompt, prompt pair or answer that cannot be used for patching."""


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


def ioi_prompt(template: str, io: str, s: str, order: str = "ABBA", place: str = "store",
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


def corrupt(prompt: IOIPrompt, corruption: str = "s2_swap", rng: random.Random | None = None,
            names: Sequence[str] = NAMES) -> IOIPrompt:
    """The corrupted partner of ``prompt``.

    * ``"s2_swap"``: S2 becomes the IO name ("..., John gave a drink to"): the
      prompt now points at the other name.  One token differs; the answer flips.
    * ``"answer_swap"``: IO and S exchanged everywhere; the answer flips.
    * ``"abc"``: the three name slots get three fresh names (neither IO nor S):
      the information is erased rather than flipped.
    """
    text = prompt.text
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


# --------------------------------------------------------------------------- tokens

def _check_text(text: Any, what: str = "a prompt") -> str:
    if not isinstance(text, str):
        raise PromptError(f"{what} must be a string, got {type(text).__name__}: {text!r}")
    if not text.strip():
        raise PromptError(f"{what} is empty (or only whitespace): {text!r}. Give the model a "
                          "sentence, e.g. 'When John and Mary went to the store, Mary gave a drink to'")
    return text


def _encode(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """The token ids of ``text`` (special tokens such as a BOS included) after checking it: a
    non-empty string whose words are all in the vocabulary.  Raises ``PromptError``."""
    _check_text(text)
    check_in_vocabulary(tokenizer, text)
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if not [i for i in ids if i not in special]:
        raise PromptError(f"{text!r} becomes no ordinary token for this tokenizer ({ids}): "
                          "is the tokenizer empty or the text only special tokens?")
    return ids


def _token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def check_in_vocabulary(tokenizer: Any, text: str) -> None:
    """Raise ``PromptError`` naming every word of ``text`` the tokenizer maps to
    its unknown token (word-level tokenizers such as the bundled model's)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return
    ids, offsets = _encode(tokenizer, text)
    bad = [text[s:e] for i, (s, e) in zip(ids, offsets) if i == unk and e > s]
    if bad:
        vocab = sorted(w for w in tokenizer.get_vocab() if w[:1].isalpha())
        raise PromptError(
            f"these words are not in the model's vocabulary: {sorted(set(bad))}. "
            f"The model would silently read them as {tokenizer.unk_token!r}. "
            f"Rephrase with known words, e.g. {', '.join(vocab[:12])}, ... "
            f"({len(vocab)} words; see tokenizer.get_vocab()).")


def single_token_id(tokenizer: Any, word: str, context: str = "x") -> int:
    """The single token id of ``word`` as it appears after a space (" John" for
    GPT-2, "John" for a word-level tokenizer).  Raises ``PromptError`` if the
    word is several tokens or unknown."""
    word = _check_text(word, "an answer word").strip()
    check_in_vocabulary(tokenizer, word)
    base, _ = _encode(tokenizer, context)
    full, _ = _encode(tokenizer, f"{context} {word}")
    # Special tokens appended at the end (none for GPT-2 / the bundled model) would break this.
    if full[: len(base)] != base or len(full) != len(base) + 1:
        pieces = _token_strings(tokenizer, full[len(base):] if full[: len(base)] == base else full)
        raise PromptError(
            f"{word!r} is not a single token for this model: it becomes {pieces}. "
            f"Patching metrics compare the logits of one answer token; choose a word "
            f"that is one token (for GPT-2 most common first names are).")
    return full[-1]


# --------------------------------------------------------------------------- pairs

@dataclass
class PromptPairs:
    """N clean/corrupted prompt pairs, tokenized and aligned.

    Shapes: ``clean_ids`` and ``corrupted_ids`` are ``[N, seq]``;
    ``answer_ids`` and ``distractor_ids`` are ``[N]`` (the clean prompt's right
    answer and its competitor: the metric is their logit difference).
    ``positions`` maps each role (IO, S1, S2, END) to its token index, the same
    in every pair.  ``tokens`` are the token strings of the first clean prompt.
    """

    clean: list[str]
    corrupted: list[str]
    answers: list[str]
    distractors: list[str]
    clean_ids: torch.Tensor
    corrupted_ids: torch.Tensor
    answer_ids: torch.Tensor
    distractor_ids: torch.Tensor
    positions: dict[str, int]
    tokens: list[str]
    corrupted_tokens: list[str]
    corruption: str = "custom"

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def seq_len(self) -> int:
        return int(self.clean_ids.shape[1])

    @property
    def position_labels(self) -> list[str]:
        """Token strings with their role, e.g. ``"Mary (S2)"``, one per position."""
        role_at = {p: r for r, p in self.positions.items()}
        return [f"{t.strip() or repr(t)} ({role_at[i]})" if i in role_at else (t.strip() or repr(t))
                for i, t in enumerate(self.tokens)]

    @property
    def first_difference(self) -> int:
        """The first position where any clean and corrupted prompt differ."""
        diff = (self.clean_ids != self.corrupted_ids).any(0).nonzero()
        return int(diff[0]) if len(diff) else self.seq_len

    def __getitem__(self, idx: int | slice) -> "PromptPairs":
        sl = idx if isinstance(idx, slice) else slice(idx, idx + 1)
        return PromptPairs(self.clean[sl], self.corrupted[sl], self.answers[sl], self.distractors[sl],
                           self.clean_ids[sl], self.corrupted_ids[sl], self.answer_ids[sl],
                           self.distractor_ids[sl], dict(self.positions), self.tokens,
                           self.corrupted_tokens, self.corruption)

    def to(self, device: torch.device | str) -> "PromptPairs":
        for name in ("clean_ids", "corrupted_ids", "answer_ids", "distractor_ids"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def summary(self) -> str:
        return (f"{len(self)} pairs ({self.corruption}), {self.seq_len} tokens each\n"
                f"  clean:     {self.clean[0]!r} -> {self.answers[0]!r} (vs {self.distractors[0]!r})\n"
                f"  corrupted: {self.corrupted[0]!r}")


def _role_token(tokenizer: Any, text: str, offsets: Sequence[tuple[int, int]], ids: Sequence[int],
                span: tuple[int, int], role: str) -> int:
    start, end = span
    hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    name = text[start:end]
    if len(hits) != 1 or text[offsets[hits[0]][0]:offsets[hits[0]][1]].strip() != name:
        pieces = _token_strings(tokenizer, [ids[i] for i in hits])
        raise PromptError(f"the {role} name {name!r} is not a single token in {text!r}: "
                          f"it is tokenized as {pieces}. Use a name that is one token.")
    return hits[0]


def make_pairs(tokenizer: Any, clean: Sequence[str], corrupted: Sequence[str],
               answers: Sequence[str], distractors: Sequence[str],
               role_spans: Sequence[dict[str, tuple[int, int]]] | None = None,
               corruption: str = "custom") -> PromptPairs:
    """Tokenize and validate prompt pairs.

    ``answers``/``distractors``: the clean prompt's right and wrong answer words
    (single tokens).  ``role_spans``: optional character spans of named roles in
    each clean prompt (IO, S1, S2); their token positions must agree across
    pairs.  END is always the last token.
    """
    for name, seq in (("clean", clean), ("corrupted", corrupted), ("answers", answers),
                      ("distractors", distractors)):
        if isinstance(seq, str):
            raise PromptError(f"{name} must be a list of strings, got one string {seq!r}: "
                              f"write [{seq!r}]")
    if role_spans is not None and len(role_spans) != len(clean):
        raise PromptError(f"role_spans has {len(role_spans)} entries for {len(clean)} prompts")
    n = len(clean)
    if not n or not (len(corrupted) == len(answers) == len(distractors) == n):
        raise PromptError(f"need the same non-zero number of clean prompts ({n}), corrupted "
                          f"prompts ({len(corrupted)}), answers ({len(answers)}) and "
                          f"distractors ({len(distractors)})")
    clean_ids, corrupted_ids, positions = [], [], None
    first_tokens: list[str] = []
    first_corrupted: list[str] = []
    differ: list[int] | None = None
    for i, (c, k) in enumerate(zip(clean, corrupted)):
        token_ids(tokenizer, _check_text(c, f"clean prompt {i}"))
        token_ids(tokenizer, _check_text(k, f"corrupted prompt {i}"))
        c_ids, c_off = _encode(tokenizer, c)
        k_ids, _ = _encode(tokenizer, k)
        if len(c_ids) != len(k_ids):
            raise PromptError(
                "a clean prompt and its corrupted partner must have the same number of tokens, "
                f"so that position i means the same thing in both. Pair {i}:\n"
                f"  clean     ({len(c_ids)} tokens): {_token_strings(tokenizer, c_ids)}\n"
                f"  corrupted ({len(k_ids)} tokens): {_token_strings(tokenizer, k_ids)}\n"
                "Swap words for words of the same token length (e.g. one-token names).")
        if clean_ids and len(c_ids) != len(clean_ids[0]):
            raise PromptError(
                f"all pairs in a set must have the same length; pair 0 has {len(clean_ids[0])} "
                f"tokens, pair {i} has {len(c_ids)}:\n  {first_tokens}\n  "
                f"{_token_strings(tokenizer, c_ids)}\nUse one template per set.")
        pos = {"END": len(c_ids) - 1}
        if role_spans is not None:
            for role, span in role_spans[i].items():
                pos[role] = _role_token(tokenizer, c, c_off, c_ids, span, role)
        if positions is None:
            positions = pos
            first_tokens = _token_strings(tokenizer, c_ids)
            first_corrupted = _token_strings(tokenizer, k_ids)
        elif pos != positions:
            raise PromptError(
                f"roles do not line up: pair 0 has roles at {positions}, pair {i} at {pos} "
                f"({c!r}). Patching position p must mean the same role in every pair: "
                "build a set from one template.")
        where = [j for j, (a, b) in enumerate(zip(c_ids, k_ids)) if a != b]
        if not where:
            raise PromptError(f"pair {i}: the clean and corrupted prompts are the same tokens "
                              f"({c!r}), so patching one into the other changes nothing. Corrupt "
                              "the prompt (e.g. swap the second mention of the subject).")
        if role_spans is None and differ is not None and where != differ:
            raise PromptError(
                f"the prompts differ at different positions: pair 0 at {differ}, pair {i} at {where} "
                f"({c!r} / {k!r}). Without role positions, patching position p must mean the same "
                "thing in every pair: build a set from one template (or pass role_spans=).")
        differ = where if differ is None else differ
        clean_ids.append(c_ids)
        corrupted_ids.append(k_ids)
    ans = [single_token_id(tokenizer, a) for a in answers]
    dis = [single_token_id(tokenizer, d) for d in distractors]
    for i, (a, d) in enumerate(zip(answers, distractors)):
        if a.strip() == d.strip():
            raise PromptError(f"pair {i}: answer and distractor are the same word {a!r}")
    return PromptPairs(
        clean=list(clean), corrupted=list(corrupted), answers=[a.strip() for a in answers],
        distractors=[d.strip() for d in distractors],
        clean_ids=torch.tensor(clean_ids), corrupted_ids=torch.tensor(corrupted_ids),
        answer_ids=torch.tensor(ans), distractor_ids=torch.tensor(dis), positions=positions or {},
        tokens=first_tokens, corrupted_tokens=first_corrupted, corruption=corruption)


def single_token_words(tokenizer: Any, words: Sequence[str]) -> list[str]:
    """The words that are one token for ``tokenizer`` (so prompts built from them align)."""
    ok = []
    for w in words:
        try:
            single_token_id(tokenizer, w)
            ok.append(w)
        except PromptError:
            pass
    return ok


def ioi_pairs(tokenizer: Any, n: int = 8, corruption: str = "s2_swap", seed: int = 0,
              template: int | str = 0, order: str = "ABBA", names: Sequence[str] = NAMES,
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
                      corruption: str = "s2_swap", names: Sequence[str] = NAMES,
                      seed: int = 0) -> PromptPairs:
    """A pair from a learner's own clean IOI prompt.

    The subject is the name mentioned twice and IO the name mentioned once
    (found among ``names`` unless given).  The corrupted prompt replaces the
    second subject mention with IO (``"s2_swap"``), exchanges the two names
    (``"answer_swap"``), or puts three fresh names in (``"abc"``).
    """
    _check_text(text)
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
