"""The data layer: prompts, never a model run.

Holds ``pairs`` (token-aligned clean/corrupted prompt pairs for any task, ``PromptPairs``),
``prompts`` (IOI templates, names, roles and corruptions) and ``behaviours`` (prompt pairs for
any binary behaviour; the toy refusal task).  Needs only a tokenizer.  May import
``helpers.base`` only.
"""
