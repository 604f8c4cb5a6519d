"""Chapter 3's own figure: the attention-output and MLP-output maps, one above the other."""
from __future__ import annotations

import textwrap
from typing import Any

import matplotlib.pyplot as plt

from helpers.base.fmt import component_name
from helpers.results.patch_result import PatchResult
from helpers.teach.plotting import plot_patching

__all__ = ["sublayers", "wrap_colourbar_label"]


def wrap_colourbar_label(ax: Any, width: int) -> None:
    """Wrap the colour-bar label of ``ax``'s heatmap to ``width`` characters a line (9 pt), so
    that it fits beside a low panel instead of running past it."""
    bar = ax.collections[0].colorbar
    bar.set_label(textwrap.fill(bar.ax.get_ylabel(), width), fontsize=9)


def sublayers(attn: PatchResult, mlp: PatchResult, normalise: bool = True) -> Any:
    """Two layer x position heatmaps (``patch_attn_out`` above, ``patch_mlp_out`` below,
    each ``[n_layers, seq]``) with aligned columns (one per token), rows named ``attn0`` … / ``mlp0`` …, and one colour scale
    (``plot_patching``'s -1 .. 1 when normalised); returns the Figure."""
    if attn.shape != mlp.shape:
        raise ValueError(f"the two results must have the same shape, got {attn.shape} and {mlp.shape}")
    n_layers, seq = attn.shape
    width = min(16.0, 3.0 + 0.62 * seq)
    fig, axes = plt.subplots(2, 1, figsize=(width, 2.6 + 0.9 * n_layers))
    for ax, result, site, what in ((axes[0], attn, "attn", "attention output"),
                                   (axes[1], mlp, "mlp", "MLP output")):
        plot_patching(result, normalise=normalise, ax=ax,
                      title=f"{what} ({'denoising' if result.direction == 'denoise' else 'noising'})")
        ax.set_yticklabels([component_name(site, i) for i in range(n_layers)], rotation=0)
        ax.set_ylabel("")
        wrap_colourbar_label(ax, 24)
    if not normalise:   # raw values: one symmetric range for both panels, so colours compare
        limit = max(float(r.grid(False).abs().max()) for r in (attn, mlp)) or 1.0
        for ax in axes:
            ax.collections[0].set_clim(-limit, limit)
    axes[0].set(xticklabels=[], xlabel="")   # columns aligned: the bottom panel names them
    fig.tight_layout()
    return fig


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
