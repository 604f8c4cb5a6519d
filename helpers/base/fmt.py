"""The small shared utilities every chapter and every ``helpers.teach.explain`` module uses: how a
number, a component and a table are written.  One naming scheme, defined here once:

* a **block** is numbered ``0 … n_layers − 1``; ``L2`` is block 2 (negatives count from the end);
* ``embed`` is the residual stream before block 0 (token + position embeddings);
* ``resid`` row ``L2`` is the residual stream *after* block 2 (``Patch("resid", 2, p)``);
* ``attn2`` / ``mlp2`` are block 2's attention and MLP outputs (``Patch("attn", 2, p)``);
* a **head** is written ``L2H5`` (block 2, head 5) — never ``2.5``, which reads as a decimal;
* a **position** is written by its token and role, e.g. ``Mary (S2)``.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch

__all__ = ["num", "signed", "pct", "head_name", "parse_head", "component_name", "layer_labels", "join",
           "bullets", "md_table", "plural"]


def _float(x: Any) -> float:
    if isinstance(x, torch.Tensor):
        x = x.item()
    return float(x)


def num(x: Any, digits: int = 2) -> str:
    """``x`` with ``digits`` decimals and never ``-0.00``: ``num(-0.001) == "0.00"``.
    A non-finite value is written as it is (``nan``, ``inf``): nothing hides it."""
    v = _float(x)
    if not math.isfinite(v):
        return str(v)
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def signed(x: Any, digits: int = 2) -> str:
    """``num`` with an explicit sign for changes: ``+0.31``, ``-0.12``, ``0.00``."""
    text = num(x, digits)
    return text if text.startswith("-") or float(text) == 0 else "+" + text


def pct(x: Any, digits: int = 0) -> str:
    """A fraction as a percentage: ``pct(0.912) == "91%"``."""
    return num(100 * _float(x), digits) + "%"


def head_name(layer: int, head: int) -> str:
    """``L2H5``: block 2, head 5."""
    return f"L{int(layer)}H{int(head)}"


def parse_head(name: str) -> tuple[int, int]:
    """``"L2H5"`` -> ``(2, 5)``; a clear error for anything else."""
    text = str(name).strip()
    try:
        layer, head = text[1:].split("H")
        if text[0] != "L":
            raise ValueError
        return int(layer), int(head)
    except ValueError:
        raise ValueError(f"{name!r} is not a head name: write a head as L<block>H<head>, "
                         "e.g. 'L2H5' for block 2, head 5") from None


def component_name(site: str, layer: int | None = None, head: int | None = None) -> str:
    """The name of a component in tables, figures and prose: ``embed``, ``L2`` (the residual
    stream after block 2), ``attn2``, ``mlp2``, ``L2H5``."""
    if site == "embed":
        return "embed"
    if site == "head":
        return head_name(layer, head)
    if site == "resid":
        return f"L{int(layer)}"
    if site in ("attn", "mlp"):
        return f"{site}{int(layer)}"
    raise ValueError(f"unknown site {site!r}: one of 'embed', 'resid', 'attn', 'mlp', 'head'")


def join(items: Iterable[Any], last: str = "and") -> str:
    """``join(["a", "b", "c"]) == "a, b and c"``."""
    words = [str(i) for i in items]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + f" {last} " + words[-1]


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "head") == "1 head"``, ``plural(3, "head") == "3 heads"``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def bullets(lines: Sequence[str]) -> str:
    """Markdown bullet list."""
    return "\n".join(f"- {line}" for line in lines)


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; floats are written with ``num`` (2 decimals)."""
    def cell(v: Any) -> str:
        if isinstance(v, (float, torch.Tensor)):
            return num(v)
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def layer_labels(n: int, resid: bool = False) -> list[str]:
    """Row labels of a model with ``n`` blocks: ``L0 .. L{n-1}``, after ``embed`` for the
    residual stream (``resid=True``)."""
    return (["embed"] + [f"L{i}" for i in range(n)]) if resid else [f"L{i}" for i in range(n)]


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
