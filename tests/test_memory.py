"""The sweeps' memory budget follows what is free where they run (``helpers.engine.memory``)."""
from __future__ import annotations

import pytest
import torch

import helpers as H
import helpers.methods.sweeps as patching
from helpers.engine import memory


def _cgroup(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return tmp_path


def test_a_cgroup_v2_limit_leaves_the_limit_minus_what_is_used(tmp_path):
    root = _cgroup(tmp_path, {"memory.max": str(2 * 2**30), "memory.current": str(2**30 + 5)})
    assert memory._cgroup_free(root) == 2**30 - 5


def test_a_cgroup_v1_limit_is_read_too(tmp_path):
    root = _cgroup(tmp_path, {"memory/memory.limit_in_bytes": "1000", "memory/memory.usage_in_bytes": "300"})
    assert memory._cgroup_free(root) == 700


@pytest.mark.parametrize("files", [{"memory.max": "max", "memory.current": "123"},
                                   {"memory/memory.limit_in_bytes": str(2**63 - 4096),
                                    "memory/memory.usage_in_bytes": "5"}, {}])
def test_no_cgroup_limit_means_no_answer_from_the_cgroup(tmp_path, files):
    assert memory._cgroup_free(_cgroup(tmp_path, files)) is None


@pytest.mark.parametrize("free, budget", [(None, 128.0), (100.0, 32.0), (400.0, 100.0), (8000.0, 128.0)])
def test_the_budget_is_a_quarter_of_what_is_free_within_its_bounds(monkeypatch, free, budget):
    monkeypatch.setattr(memory, "free_memory_mb", lambda device="cpu": free)
    assert memory.sweep_budget_mb() == budget


def test_the_machine_reports_free_memory():
    free = memory.free_memory_mb()
    assert free is not None and free > 0


def test_a_sweep_takes_its_default_budget_from_free_memory_and_chunks_to_it(monkeypatch, bundled64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=4, seed=1)
    reference = H.patch_residual(bundled64, pairs, batch_size=10_000)   # one chunk
    asked = []

    def scarce(device="cpu"):
        asked.append(torch.device(device).type)
        return memory.MIN_BUDGET_MB / 64   # forces one row per chunk

    monkeypatch.setattr(patching, "sweep_budget_mb", scarce)
    chunked = H.patch_residual(bundled64, pairs)
    assert asked == ["cpu"]
    for m in reference.values:
        torch.testing.assert_close(chunked.values[m], reference.values[m], atol=1e-10, rtol=0)


def _resident_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not memory.release_freed_memory(), reason="needs glibc's malloc_trim (Linux)")
def test_releasing_freed_memory_hands_freed_tensors_back_to_the_system():
    # 4,000 tensors of 100 KB (under glibc's mmap threshold, so on the heap); freeing every
    # other one leaves 200 MB of holes between live tensors, which glibc keeps by itself
    tensors = [torch.ones(25_000) for _ in range(4_000)]
    memory.release_freed_memory()
    before = _resident_mb()
    del tensors[::2]
    held = _resident_mb()
    memory.release_freed_memory()
    after = _resident_mb()
    assert held > before - 50, "freeing alone already gave the memory back: the test shows nothing"
    assert after < held - 120, f"resident {held:.0f} MB -> {after:.0f} MB after the release"
    assert len(tensors) == 2_000
