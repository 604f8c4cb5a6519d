"""The one return type of every ``helpers.teach.explain`` function."""
from __future__ import annotations

from IPython.display import Markdown

__all__ = ["markdown"]


def markdown(*parts: str) -> Markdown:
    """Join non-empty Markdown ``parts`` with blank lines into a displayable object."""
    return Markdown("\n\n".join(p for p in parts if p))
