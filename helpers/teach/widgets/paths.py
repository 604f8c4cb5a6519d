"""Chapter 9 (path patching) explorer: pick a sender and a receiver, see the path-patched metric
and its bootstrap interval.  Core widgets only (ipywidgets 7 and 8)."""
from __future__ import annotations

from typing import Any

from helpers.base.fmt import num
from helpers.data.prompts import PromptPairs
from helpers.methods.path_patching import path_patch
from helpers.models.loaded import handle
from helpers.base.validate import Direction
from helpers.results.metrics import Metric

__all__ = ["senders", "receivers", "path_report", "path_explorer"]


def senders(facts: Any) -> list[str]:
    """Every sender name of a model, in forward order: ``embed``, then per block its heads,
    ``attnL`` (all its heads) and ``mlpL``."""
    return ["embed"] + [x for L in range(facts.n_layers) for x in
                        [f"L{L}H{h}" for h in range(facts.n_heads)] + [f"attn{L}", f"mlp{L}"]]


def receivers(facts: Any, query_at: str = "END") -> list[str]:
    """Every receiver name: ``logits``, then per block each head's query (at ``query_at``),
    key and value (every position; shared key/value heads with grouped-query attention) and
    ``mlpL.in``."""
    out = ["logits"]
    gqa = facts.n_kv_heads < facts.n_heads
    for L in range(facts.n_layers):
        out += [f"L{L}H{h}.q@{query_at}" for h in range(facts.n_heads)]
        kv = [f"L{L}KV{g}" for g in range(facts.n_kv_heads)] if gqa else [
            f"L{L}H{h}" for h in range(facts.n_heads)]
        out += [f"{name}.{x}" for name in kv for x in "kv"] + [f"mlp{L}.in"]
    return out


def path_report(model: Any, pairs: PromptPairs, sender: str, receiver: str,
                direction: Direction = "denoise", metric: Metric = "logit_diff",
                normalise: bool = True) -> str:
    """One line: the path-patched mean ``metric``, its effect with the 95% bootstrap interval,
    the importance where it can be normalised, and the p-value; or the error path patching
    gives (a receiver before its sender, say)."""
    mh = handle(model)
    try:
        r = path_patch(mh, pairs, sender, receiver, direction, metric=metric)
    except ValueError as err:
        return f"no path: {err}"
    row = r.stats(metric).iloc[0]
    text = (f"{sender} -> {receiver} ({direction}): mean {metric} {num(r.mean(metric).item(), 4)}; "
            f"effect {num(row['effect'], 4)} [95% interval {num(row['ci_low'], 4)} .. "
            f"{num(row['ci_high'], 4)}], p = {num(row['p'], 4)}")
    if normalise and row["importance"] is not None:
        text += f"; importance {num(row['importance'], 4)}"
    return text + ("  (the interval contains 0)" if row["ci_low"] <= 0 <= row["ci_high"] else "")


def path_explorer(model: Any, pairs: PromptPairs, metric: Metric = "logit_diff",
                  normalise: bool = True, sender: str | None = None,
                  receiver: str = "logits") -> Any:
    """Two dropdowns (sender, receiver) and a direction toggle: each change runs ``path_patch``
    for that one path and prints ``path_report``.  Returns the widget (a ``VBox``)."""
    mh = handle(model)
    import ipywidgets as w

    facts = mh.anatomy
    send_names, recv_names = senders(facts), receivers(facts)
    pick_sender = w.Dropdown(options=send_names, value=sender or send_names[1], description="sender")
    pick_receiver = w.Dropdown(options=recv_names, value=receiver, description="receiver")
    pick_direction = w.ToggleButtons(options=["denoise", "noise"], value="denoise",
                                     description="direction")
    shown = w.Output()

    def redraw(*_: Any) -> None:
        shown.clear_output(wait=True)
        with shown:
            print(path_report(mh, pairs, pick_sender.value, pick_receiver.value,
                              pick_direction.value, metric, normalise))

    for control in (pick_sender, pick_receiver, pick_direction):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([pick_sender, pick_receiver]), pick_direction, shown])


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
