"""Chapter 8's explorer: pick a site, see its exact map beside the attribution estimate and
the scatter plot of one against the other (``helpers.teach.figures.attribution``)."""
from __future__ import annotations

from typing import Any, Mapping

import matplotlib.pyplot as plt

from helpers.results.patch_result import PatchResult
from helpers.teach.explain.attribution import SITE_NAMES
from helpers.teach.figures.attribution import compare, scatter

__all__ = ["attribution_explorer"]


def attribution_explorer(exact: Mapping[str, PatchResult], estimate: Mapping[str, PatchResult],
                         normalise: bool = True, site: str = "resid") -> Any:
    """A site dropdown (the keys of ``exact``: ``resid``, ``attn``, ``mlp``, ``heads``) above
    the two figures for that site; returns the widget (core ipywidgets only)."""
    import ipywidgets as w

    pick = w.Dropdown(options=[(SITE_NAMES.get(s, s), s) for s in exact], value=site,
                      description="site")
    out = w.Output()

    def draw(*_: Any) -> None:
        out.clear_output(wait=True)
        with out:
            compare(exact[pick.value], estimate[pick.value], normalise)
            plt.show()
            scatter(exact, estimate, normalise, sites=[pick.value])
            plt.show()

    pick.observe(draw, names="value")
    draw()
    return w.VBox([pick, out])


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
