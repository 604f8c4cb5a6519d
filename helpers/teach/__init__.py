"""The teaching layer: what the chapters show, and nothing a result depends on.

Holds ``explain`` (each chapter's "what it means" prose, generated from results),
``figures`` (each chapter's figures), ``widgets`` (the interactive explorers), ``plotting``
(heatmaps, bars, attention plots), ``diagrams`` (flow charts and circuit diagrams as images),
``checks`` (exercise checks) and ``notebook`` (a chapter's setup, parameters, output folder and
stamp).  May import every layer below it (``circuits``, ``methods``, ``results``, ``engine``,
``models``, ``data``, ``base``).
"""
