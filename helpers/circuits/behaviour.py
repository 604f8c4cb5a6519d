"""The IOI behaviour a circuit must explain: how often the model names IO, and by how much it
prefers IO to S, over random prompts of every template and both name orders, with seeded
percentile-bootstrap intervals and a breakdown per template."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from helpers.data.prompts import (NAMES, OBJECTS, PLACES, TEMPLATES, random_ioi_prompts,
                                  single_token_words)
from helpers.methods.observe import ioi_per_prompt
from helpers.models.loaded import handle
from helpers.results.stats import bootstrap_indices, percentile_interval, resampled_means

__all__ = ["Behaviour", "behaviour"]


@dataclass(frozen=True)
class Behaviour:
    """IOI behaviour over ``n`` prompts: rates and the mean logit difference with 95 % bootstrap
    intervals (``(low, high)``)."""

    n: int
    top1: float
    top1_ci: tuple[float, float]
    io_over_s: float
    io_over_s_ci: tuple[float, float]
    logit_diff: float
    logit_diff_ci: tuple[float, float]
    per_prompt: dict = field(default_factory=dict, repr=False)  # template, order and the 3 measures

    def table(self) -> Any:
        import pandas as pd

        return pd.DataFrame([
            {"measure": "IO is the top-1 next token", "value": self.top1, "ci_low": self.top1_ci[0],
             "ci_high": self.top1_ci[1]},
            {"measure": "IO's logit above S's", "value": self.io_over_s,
             "ci_low": self.io_over_s_ci[0], "ci_high": self.io_over_s_ci[1]},
            {"measure": "mean logit difference IO - S", "value": self.logit_diff,
             "ci_low": self.logit_diff_ci[0], "ci_high": self.logit_diff_ci[1]}]).set_index("measure")

    def by(self, key: str = "template") -> Any:
        """One row per template (``key="template"``: index into ``helpers.TEMPLATES``, both name
        orders) or per name order (``"order"``: ABBA = IO first, BABA = S first): the number of
        prompts, the IO top-1 rate, the IO-above-S rate and the mean logit difference."""
        import pandas as pd

        if key not in ("template", "order"):
            raise ValueError(f"key must be 'template' or 'order', got {key!r}")
        frame = pd.DataFrame(self.per_prompt)
        return frame.groupby(key).agg(prompts=("logit_diff", "size"), IO_top1=("top1", "mean"),
                                      IO_above_S=("io_over_s", "mean"),
                                      mean_logit_diff=("logit_diff", "mean"))


def behaviour(model: Any, n: int = 150, seed: int = 0, n_boot: int = 1000) -> Behaviour:
    """IOI behaviour on ``n`` random prompts over every template in ``helpers.TEMPLATES`` and both
    name orders (``random_ioi_prompts``; names, places and objects that are one token for this
    tokenizer), with seeded percentile-bootstrap intervals (``n_boot`` resamples)."""
    mh = handle(model)

    tok = mh.tokenizer
    prompts = random_ioi_prompts(n, seed=seed, templates=TEMPLATES, names=single_token_words(tok, NAMES),
                                 places=single_token_words(tok, PLACES),
                                 objects=single_token_words(tok, OBJECTS))
    per = ioi_per_prompt(mh, prompts)
    idx = bootstrap_indices(n, n_boot, seed)
    keep = {"template": [TEMPLATES.index(p.template) for p in prompts], "order": [p.order for p in prompts],
            **{k: v.tolist() for k, v in per.items()}}
    out: list[Any] = []
    for key in ("top1", "io_over_s", "logit_diff"):
        x = per[key].numpy()
        lo, hi = percentile_interval(resampled_means(x, idx))
        out += [float(x.mean()), (float(lo), float(hi))]
    return Behaviour(n, *out, per_prompt=keep)





from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
