"""Token-aligned prompt pairs for any task: tokens, answers and the ``PromptPairs`` object.

A ``PromptPairs`` object holds N clean/corrupted prompt pairs, tokenized, all of the same
length and with their roles at the same token positions, so a patch at "position 7" means
the same thing in every pair.  Everything that can go wrong (empty prompts, different
lengths, multi-token answers, unknown words, identical pairs, pairs that differ at
different positions, misaligned roles) raises a ``PromptError`` that says what was wrong and
how to fix it.  IOI prompts are built on top of this in ``helpers.data.prompts``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from helpers.base.validate import vocab_fingerprint

__all__ = ["PromptError", "PromptPairs", "make_pairs", "single_token_id", "single_token_words",
           "token_ids", "check_in_vocabulary"]


class PromptError(ValueError):
    """A prompt, prompt pair or answer that cannot be used for patching."""


# --------------------------------------------------------------------------- tokens

def check_text(text: Any, what: str = "a prompt") -> str:
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
    check_text(text)
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
    word = check_text(word, "an answer word").strip()
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
    in every pair.  ``tokens`` are the token strings of the first clean prompt.  ``vocab`` is
    the fingerprint of the vocabulary they were tokenized with (``validate.vocab_fingerprint``):
    a model with another vocabulary refuses them.
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
    vocab: str | None = None

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
                           self.corrupted_tokens, self.corruption, self.vocab)

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
        token_ids(tokenizer, check_text(c, f"clean prompt {i}"))
        token_ids(tokenizer, check_text(k, f"corrupted prompt {i}"))
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
        tokens=first_tokens, corrupted_tokens=first_corrupted, corruption=corruption,
        vocab=vocab_fingerprint(tokenizer))


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


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
