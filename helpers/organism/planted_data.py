"""What ``ioi-planted`` is trained on: its cast, its templates and fillers, its vocabulary and one
training step's aligned prompt groups (``sample_step``).  The recipe is in ``train_planted``.

Held out: 15 % of the unordered name pairs (``train_ioi.name_pair_split``) and every template of
``helpers.data.prompts.HELDOUT_TEMPLATES``; generated training templates never use a held-out
template's own clauses (``HELDOUT_PARTS``, ``check_split``).
"""
from __future__ import annotations

import random
import re

import torch

from helpers.data.prompts import (FILLERS, HELDOUT_TEMPLATES, NAMES, OBJECTS, PLACES,
                                  TRAIN_TEMPLATES, ioi_prompt)
from helpers.organism.train_ioi import check_heldout_words
from helpers.organism.training import SPECIALS, WORD_RE, pad_batch

N_LAYER, N_HEAD, D_MODEL = 4, 4, 64

#: role -> the designated heads (layer, head).  Every other head and every MLP: no effect.
CAST: dict[str, tuple[tuple[int, int], ...]] = {
    "duplicate_token": ((0, 1),),
    "s_inhibition": ((1, 2),),
    "name_mover": ((2, 0),),
    "decoy": ((2, 3),),
    "backup_name_mover": ((3, 1),),
    "negative_name_mover": ((3, 2),),
}

#: Training templates beyond ``TRAIN_TEMPLATES`` (none of them is a held-out template).
EXTRA_TEMPLATES: tuple[str, ...] = (
    "{A} and {B} went to the {place} together. {S} gave a {object} to",
    "When {A} and {B} came back from the {place}, {S} gave the {object} to",
    "At the {place}, {A} and {B} found a {object}. {S} gave it to",
    "Yesterday {A} and {B} went to the {place}, and {S} gave a {object} to",
    "{A} and {B} were at the {place} all day. {S} brought a {object} to",
    "After the rain, {A} and {B} went to the {place}. {S} handed the {object} to",
    "Before {A} and {B} left the {place}, {S} gave a {object} to",
    "Since {A} and {B} were at the {place}, {S} sent the {object} to",
    "The {place} was busy, so {A} and {B} left. {S} gave a {object} to",
    "{A} and {B} met at the {place}. Later, {S} gave a {object} to",
    "In the morning, {A} and {B} walked to the {place}. {S} gave a {object} to",
    "When {A} and {B} were at the {place}, {S} wanted to give a {object} to",
    "While {A} and {B} were at the {place}, {S} brought the {object} to",
    "{A} and {B} went to the {place} for a {object}. {S} gave it to",
    "Then {A} and {B} talked at the {place}, and {S} passed a {object} to",
    "Once {A} and {B} got to the {place}, {S} threw the {object} to",
    "{A} and {B} stayed at the {place}. Then {S} gave a {object} to",
    "During the day, {A} and {B} were at the {place}. {S} showed a {object} to",
    "Because {A} and {B} were at the {place}, {S} gave a {object} to",
    "So {A} and {B} went to the {place}, where {S} gave a {object} to",
)
TRAINING_TEMPLATES: tuple[str, ...] = TRAIN_TEMPLATES + EXTRA_TEMPLATES

#: Parts of generated training templates: INTRO + " {A} and {B} " + FIRST + JOIN + S_CLAUSE.
#: The first clauses and S-clauses of the held-out templates are left out (``HELDOUT_PARTS``), so a
#: generated template is never a held-out one and never contains a held-out clause; what the
#: original ``TRAIN_TEMPLATES`` share with the held-out ones is stated in the model card.
INTROS: tuple[str, ...] = ("When", "After", "While", "Then,", "Later,", "Once", "Before",
                           "Because", "Since", "", "Yesterday", "So", "In the morning,",
                           "After the lunch,", "Friends", "At first", "On the weekend,")
FIRST_CLAUSES: tuple[str, ...] = (
    "went to the {place}", "were at the {place}", "were walking to the {place}",
    "met at the {place}", "got a {object} at the {place}", "had a lot of fun at the {place}",
    "stayed at the {place}", "talked at the {place}", "found a {object} at the {place}",
    "came back from the {place}", "walked to the {place}", "left the {place}",
    "were thinking about going to the {place}", "got to the {place}", "were busy at the {place}",
    "spent the day at the {place}")
JOINS: tuple[str, ...] = (", ", ". ", ", and ", ". Then ", ". Later, ", " and then ")
S_CLAUSES: tuple[str, ...] = (
    "{S} gave a {object} to", "{S} gave the {object} to", "{S} gave it to",
    "{S} handed the {object} to", "{S} sent the {object} to", "{S} brought a {object} to",
    "{S} brought the {object} to", "{S} brought it to", "{S} passed a {object} to",
    "{S} threw the {object} to", "{S} showed a {object} to", "{S} showed it to",
    "{S} decided to give it to", "{S} decided to give a {object} to",
    "{S} wanted to give a {object} to", "{S} wanted to send the {object} to",
    "{S} gave a {object} back to", "{S} said goodbye and gave a {object} to",
    "{S} quickly gave a {object} to", "{S} then gave it to", "{S} finally handed it to",
    "{S} was happy to give a {object} to", "{S} had a {object} and gave it to",
    "{S} took a {object} and handed it to")
#: the held-out templates' own first clauses and S-clauses, never generated
HELDOUT_PARTS: tuple[str, ...] = ("arrived at the {place}", "were working at the {place}",
                                  "had a lunch at the {place}", "{S} sent a {object} to",
                                  "{S} handed a {object} to", "{S} wanted to give it to")


def _names_after(intro: str) -> str:
    """``intro`` then the two names (just the names for an empty intro)."""
    return f"{intro} {{A}} and {{B}}" if intro else "{A} and {B}"


def generated_template(rng: random.Random) -> str:
    """A random generated training template (see ``INTROS`` ...)."""
    head = _names_after(rng.choice(INTROS))
    return f"{head} {rng.choice(FIRST_CLAUSES)}{rng.choice(JOINS)}{rng.choice(S_CLAUSES)}"


def scrambled_template(rng: random.Random, words: list[str]) -> str:
    """A template whose wording carries no cue: "{A} and {B}" after 0-3 random words, then 2-7
    random words, a comma or full stop, "{S}", 1-5 random words and "to" (``words``: the
    vocabulary without names and specials).  Only the name structure is left to find S2 by."""
    w = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
    intro = w(rng.randint(0, 3))
    return (f"{intro} {{A}} and {{B}} {w(rng.randint(2, 7))}{rng.choice((',', '.'))} "
            f"{{S}} {w(rng.randint(1, 5))} to").strip()


def all_generated_templates() -> list[str]:
    """Every template ``generated_template`` can draw."""
    return [f"{_names_after(i)} {f}{j}{c}" for i in INTROS for f in FIRST_CLAUSES for j in JOINS
            for c in S_CLAUSES]

#: Name-free sentences beyond ``FILLERS``.
EXTRA_FILLERS: tuple[str, ...] = (
    "It was a cold morning.",
    "The park was full of people.",
    "Nobody was at the market.",
    "It had rained all night.",
    "The day was long.",
    "A letter came in the morning.",
)
TRAINING_FILLERS: tuple[str, ...] = FILLERS + EXTRA_FILLERS


#: Training-only names (never in ``helpers.data.prompts.NAMES``, never in a checked prompt): with
#: probability ``p_extra`` a training prompt's pair has at least one of them.  More distinct names
#: make the name mover's "not the subject" comparison a generic one instead of one learned pair by
#: pair, which is what held-out name pairs test.
EXTRA_NAMES: tuple[str, ...] = ("Oliver", "Sophie", "Henry", "Olivia", "Jack", "Lucy", "Adam",
                                "Nora", "Ruth", "Simon", "Clara", "Victor", "Irene", "Oscar",
                                "Hannah", "Leo", "Zoe", "Max", "Ella", "Ben")


def extra_pairs() -> list[tuple[str, str]]:
    """Every unordered pair with at least one name of ``EXTRA_NAMES`` (none is a held-out pair)."""
    names = list(NAMES) + list(EXTRA_NAMES)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if a in EXTRA_NAMES or b in EXTRA_NAMES]


def designated() -> set[tuple[int, int]]:
    """Every head of the cast (layer, head)."""
    return {h for heads in CAST.values() for h in heads}


def vocabulary(extra_names: bool = False) -> list[str]:
    """Specials, then every word of the templates (training and held out), fillers, names
    (``EXTRA_NAMES`` too if ``extra_names``), places and objects."""
    words: set[str] = set(NAMES) | set(PLACES) | set(OBJECTS) | (set(EXTRA_NAMES) if extra_names else set())
    for text in (TRAINING_TEMPLATES + HELDOUT_TEMPLATES + TRAINING_FILLERS + INTROS
                 + FIRST_CLAUSES + JOINS + S_CLAUSES):
        words |= set(WORD_RE.findall(re.sub(r"\{\w+\}", " ", text)))
    return list(SPECIALS) + sorted(words)


def check_split() -> None:
    """Held-out templates are never trained on, and are made of words seen in training."""
    overlap = set(TRAINING_TEMPLATES + tuple(all_generated_templates())) & set(HELDOUT_TEMPLATES)
    if overlap:
        raise ValueError(f"held-out templates in the training set: {overlap}")
    parts = set(FIRST_CLAUSES) | set(S_CLAUSES)
    if parts & set(HELDOUT_PARTS) or not all(any(p in t for t in HELDOUT_TEMPLATES) for p in HELDOUT_PARTS):
        raise ValueError("generated parts must leave out exactly the held-out templates' clauses")
    check_heldout_words(TRAINING_TEMPLATES + TRAINING_FILLERS)


# --------------------------------------------------------------------------- data

def sample_step(rng: random.Random, ids: dict[str, int], name_pairs: list, groups: int,
                group_size: int, max_fillers: int = 2, p_listed: float = 0.4,
                p_scrambled: float = 0.0, more_pairs: list | None = None,
                p_extra: float = 0.0) -> dict[str, torch.Tensor]:
    """One step's clean prompts: ``groups`` aligned groups of ``group_size`` base prompts (same
    template (one of ``TRAINING_TEMPLATES`` with probability ``p_listed``, a scrambled one with
    ``p_scrambled``, else a generated one),
    fillers, place and object; names and order drawn independently), followed by each
    base prompt's *twin* (a pair from ``more_pairs`` with probability ``p_extra``): the same prompt with S2 replaced by the IO name (the S2-swap corruption,
    whose answer is the base's S).  Rows ``0 .. n-1`` are the bases, ``n .. 2n-1`` their twins.

    Returns token ids ``x`` [2n, seq] (right-padded), role positions ``io``/``s1``/``s2``/``end``
    (each row's own roles), answer ``io_id`` and distractor ``s_id``, ``group``, ``twin`` (the row
    of the other prompt of the pair) and ``source`` (another group member's row of the same kind:
    the donor of swapped values with other names) and ``slot`` (1 when S1 is the second name)."""
    seqs, rec = [], {k: [] for k in ("io", "s1", "s2", "end", "io_id", "s_id", "group", "source",
                                     "slot")}
    n = groups * group_size
    plain_words = [w for w in ids if w not in SPECIALS and w not in NAMES and w not in EXTRA_NAMES
                   and w.isalpha()]
    for g in range(groups):
        u = rng.random()
        template = (rng.choice(TRAINING_TEMPLATES) if u < p_listed
                    else scrambled_template(rng, plain_words) if u > 1 - p_scrambled
                    else generated_template(rng))
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        fillers = [rng.choice(TRAINING_FILLERS) for _ in range(rng.randint(0, max_fillers))]
        shift = rng.randint(1, group_size - 1)
        for m in range(group_size):
            io, s = rng.choice(more_pairs if p_extra > 0 and rng.random() < p_extra else name_pairs)
            if rng.random() < 0.5:
                io, s = s, io
            order = rng.choice(("ABBA", "BABA"))
            p = ioi_prompt(template, io, s, order, place, obj)
            rec["slot"].append(int(order == "ABBA"))  # S1's name slot: 1 = second ("{B}")
            words = WORD_RE.findall(" ".join(fillers + [p.text]))
            seq = [ids["<bos>"]] + [ids[w] for w in words]
            s_at = [i + 1 for i, w in enumerate(words) if w == s]
            seqs.append(seq)
            rec["io"].append(words.index(io) + 1)
            rec["s1"].append(s_at[0])
            rec["s2"].append(s_at[1])
            rec["end"].append(len(seq) - 1)
            rec["io_id"].append(ids[io])
            rec["s_id"].append(ids[s])
            rec["group"].append(g)
            rec["source"].append(g * group_size + (m + shift) % group_size)
    # the twins: S2 -> IO; their IO is the base's S1 position, their S1 the base's IO position
    twins = [list(seq) for seq in seqs]
    for i, seq in enumerate(twins):
        seq[rec["s2"][i]] = rec["io_id"][i]
    out = {k: torch.tensor(v) for k, v in rec.items()}
    out = {"io": torch.cat([out["io"], out["s1"]]), "s1": torch.cat([out["s1"], out["io"]]),
           "s2": out["s2"].repeat(2), "end": out["end"].repeat(2),
           "io_id": torch.cat([out["io_id"], out["s_id"]]),
           "s_id": torch.cat([out["s_id"], out["io_id"]]), "group": out["group"].repeat(2),
           "source": torch.cat([out["source"], out["source"] + n]),
           "slot": torch.cat([out["slot"], 1 - out["slot"]]),
           "twin": torch.cat([torch.arange(n) + n, torch.arange(n)])}
    out["x"] = pad_batch(seqs + twins, ids["<pad>"])
    return out

