"""How much memory a sweep may use: a budget that follows what is free, not a fixed figure.

A learner's kernel on mybinder lives in a 2 GB container (JupyterLab included) and is
restarted when the container passes it; a laptop or a GPU has far more.  ``sweep_budget_mb``
gives the sweeps a quarter of the memory that is free *now* where the sweep runs, capped at
``MAX_BUDGET_MB`` (more gives no speed on CPU: the batches are already large; see
``benchmarks/chapter_memory.py`` for what it keeps each chapter at) and never below
``MIN_BUDGET_MB`` (one row at a time still runs).

Where "free" comes from, first that answers:

* CUDA: ``torch.cuda.mem_get_info`` of the device;
* a cgroup memory limit (containers: mybinder, Colab, CI): v2 ``memory.max - memory.current``,
  v1 ``memory.limit_in_bytes - memory.usage_in_bytes``;
* the operating system's available memory (``MemAvailable`` in ``/proc/meminfo``, else
  ``psutil`` if installed);
* none of these: ``MAX_BUDGET_MB`` is assumed affordable.
The smallest answer wins when several apply (a container limit below the host's free memory).
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import torch

from helpers.models.anatomy import ModelAnatomy

__all__ = ["free_memory_mb", "release_freed_memory", "rows_per_chunk", "sweep_budget_mb", "MAX_BUDGET_MB", "MIN_BUDGET_MB", "REMOTE_BUDGET_MB"]

MAX_BUDGET_MB = 128.0   # GPT-2 small's chapters stay under 1.5 GB; a larger chunk is no faster on CPU
REMOTE_BUDGET_MB = 512.0   # a remote model's chunk is one request: the server's memory, fewer round trips
MIN_BUDGET_MB = 32.0
_SHARE = 0.25
_CGROUP = Path("/sys/fs/cgroup")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None   # "max" (no limit) is not a number


def _cgroup_free(root: Path = _CGROUP) -> int | None:
    """Bytes left under this process's cgroup limit, or None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit, usage = _read_int(root / limit_file), _read_int(root / usage_file)
        if limit is not None and usage is not None and limit < 2**60:   # v1 "no limit" is ~2^63
            return max(0, limit - usage)
    return None


def _os_free() -> int | None:
    """Bytes the operating system reports as available, or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def free_memory_mb(device: Any = "cpu") -> float | None:
    """Megabytes free now for tensors on ``device`` (see the module docstring), or None when
    nothing reports it."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2**20
    answers = [b for b in (_cgroup_free(), _os_free()) if b is not None]
    return min(answers) / 2**20 if answers else None


def release_freed_memory() -> bool:
    """Hand the memory of freed tensors back to the operating system (glibc's ``malloc_trim``);
    True if it ran (Linux with glibc), False elsewhere.

    On Linux a freed CPU tensor below glibc's (adaptive) mmap threshold stays in the process's
    heap, still counted in its resident size: a kernel that has run a dozen traces and sweeps
    holds a few hundred MB it no longer uses, and the next sweep's chunk comes on top of it
    (mybinder counts resident memory)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def sweep_budget_mb(device: Any = "cpu") -> float:
    """The memory a sweep's chunk of rows may take: a quarter of ``free_memory_mb(device)``,
    between ``MIN_BUDGET_MB`` and ``MAX_BUDGET_MB``.  On the CPU, memory freed earlier is first
    handed back (``release_freed_memory``), so the sweep starts from what is really in use."""
    if torch.device(device).type == "cpu":
        release_freed_memory()
    free = free_memory_mb(device)
    if free is None:
        return MAX_BUDGET_MB
    return float(min(MAX_BUDGET_MB, max(MIN_BUDGET_MB, _SHARE * free)))


def rows_per_chunk(f: ModelAnatomy, seq: int, memory_mb: float) -> int:
    """How many patched rows of ``seq`` tokens fit in ``memory_mb`` on a model of anatomy ``f``."""
    size = torch.finfo(f.dtype).bits // 8
    # activations alive during a forward (a few per layer, the MLP hidden layer ~4 d_model, eager
    # attention scores) and the last position's logits, per batch row (the metrics' softmax
    # and KL run on blocks of rows: helpers.results.metrics.metrics_of)
    per_row = size * (seq * (16 * f.d_model + 4 * f.n_heads * seq) + 2 * f.vocab_size)
    return max(1, int(memory_mb * 2**20 // per_row))


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
