"""Chapter 1's explorer: type a prompt, see the model's top predictions and, for an IOI
prompt, the logit difference on it and on its S2-swapped partner."""
from __future__ import annotations

from typing import Any

from helpers.data.prompts import PromptError, pairs_from_prompt
from helpers.methods.observe import last_logits, top_predictions
from helpers.models.loaded import handle
from helpers.results.metrics import logit_diff

__all__ = ["explain_prompt", "prompt_explorer"]


def explain_prompt(model: Any, text: str) -> None:
    """Print the five most likely next tokens after ``text`` and, when it is an IOI prompt
    (two names of ``H.NAMES``, one of them twice), the logit difference IO − S on it and on
    its S2-swapped partner.  Errors are printed, not raised."""
    mh = handle(model)
    try:
        top = top_predictions(mh, text, k=5)
    except (PromptError, ValueError) as err:
        print(f"{type(err).__name__}: {err}")
        return
    print("top 5: " + ", ".join(f"{tok.strip()} ({p:.3g})" for tok, p in top))
    try:
        pair = pairs_from_prompt(mh.tokenizer, text)
    except (PromptError, ValueError) as err:
        print(f"no logit difference: {err}")
        return
    ld = [logit_diff(last_logits(mh, ids), pair.answer_ids, pair.distractor_ids).item()
          for ids in (pair.clean_ids, pair.corrupted_ids)]
    print(f"logit difference {pair.answers[0]} − {pair.distractors[0]}: {ld[0]:+.3g} on this "
          f"prompt, {ld[1]:+.3g} on its S2-swapped partner {pair.corrupted[0]!r}")


def prompt_explorer(model: Any, prompt: str) -> Any:
    """A text box (start value ``prompt``) whose Enter runs ``explain_prompt`` into an output
    area below it; returns the widget (displaying it is the notebook's job)."""
    mh = handle(model)
    import ipywidgets as w

    box = w.Text(value=prompt, description="prompt", continuous_update=False,
                 layout=w.Layout(width="95%"))
    report = w.Output()

    def on_prompt(*_: Any) -> None:
        report.clear_output(wait=True)
        with report:
            explain_prompt(mh, box.value)

    box.observe(on_prompt, names="value")
    on_prompt()
    return w.VBox([w.Label("Type a prompt and press Enter:"), box, report])


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
