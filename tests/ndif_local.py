"""Serving ``remote="local"`` traces the way an NDIF worker serves a request, with the ``helpers``
package hidden (a helper module for the tests, not a test file; the fixtures ``strict`` and
``helpers_by_reference`` in ``tests/conftest.py`` switch it on).

``serve_like_ndif``: the deserialised copy of a trace body runs against the deserialised copies
of its variables, only ``.save()``d names come back (through ``torch.save``/``torch.load``), and
``helpers`` is hidden meanwhile: every ``helpers*`` entry of ``sys.modules`` is replaced by a
module that raises on any attribute access, and importing one raises.  A body that calls into
helpers (or carries a helpers object, e.g. a ``ModelAnatomy``) fails; a body that fills a list
made outside it leaves that list empty.  See tests/test_remote.py for what this adds to nnsight's
own dry run.
"""
from __future__ import annotations

import contextlib
import io
import linecache
import sys
import types

import torch

class HelpersReached(RuntimeError):
    """A trace body (or something it carries) used the helpers package, which NDIF lacks."""


class Hidden(types.ModuleType):
    def __repr__(self) -> str:
        return f"<hidden module {self.__name__!r}>"

    def __getattr__(self, name: str):
        raise HelpersReached(f"the trace reached {self.__name__}.{name}: an NDIF server has no "
                             "helpers package (resolve it before the `with model.trace(...)`)")


class _NoHelpersImport:
    def find_spec(self, name, path=None, target=None):
        if name == "helpers" or name.startswith("helpers."):
            raise HelpersReached(f"the trace imported {name}: an NDIF server has no helpers package")
        return None


@contextlib.contextmanager
def helpers_hidden():
    """``helpers`` is unusable inside: modules raise on attribute access, imports raise."""
    real = {k: v for k, v in sys.modules.items() if k == "helpers" or k.startswith("helpers.")}
    blocker = _NoHelpersImport()
    for key in real:
        sys.modules[key] = Hidden(key)
    sys.meta_path.insert(0, blocker)
    try:
        yield
    finally:
        sys.meta_path.remove(blocker)
        for key in [k for k in sys.modules if k == "helpers" or k.startswith("helpers.")]:
            del sys.modules[key]
        sys.modules.update(real)


def serve_like_ndif(blob: bytes, server, env=None, compress: bool = False) -> bytes:
    """An NDIF worker's part of a request, here, with helpers hidden: deserialise the request
    against ``server``'s modules, run the *deserialised* body on its deserialised variables,
    and return its saved names as a result blob (``torch.save``, zstd if ``compress``)."""
    import cloudpickle.cloudpickle as cp
    from nnsight.schema.request import RequestModel
    from nnsight.tracing.tracer import _saves

    assert "helpers" not in cp._PICKLE_BY_VALUE_MODULES  # else helpers' code would ship with it
    cached = dict(linecache.cache)  # deserialize registers the body's source under its file
    buffer = io.BytesIO()
    try:
        with helpers_hidden():
            restored = RequestModel.deserialize(blob, server._remoteable_persistent_objects(),
                                                compress=compress)
            if env:
                server._remoteable_set_env(env)
            restored.execute(restored.info.code)
            saves = _saves()
            result = {k: v for k, v in restored.info.frame.f_locals.items() if id(v) in saves}
            torch.save(result, buffer)
    finally:
        linecache.cache.clear()
        linecache.cache.update(cached)
    data = buffer.getvalue()
    if compress:
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    return data


def _load(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _push(tracer, result: dict) -> None:
    """Hand the saved values back to the caller's frame, as nnsight's RemoteBackend does."""
    from nnsight.tracing.tracer import mark
    from nnsight.tracing.util import push

    for value in result.values():
        mark(value)
    push(tracer.info.frame, result)


def serve_strictly(monkeypatch) -> None:
    """From now on (until ``monkeypatch`` undoes it) every ``remote="local"`` trace is served by
    ``serve_like_ndif`` instead of nnsight's own dry run, and requests refer to helpers by name
    (as from a pip-installed package: nnsight would otherwise ship the working tree's helpers code
    with each request, hiding rule (c)'s violations)."""
    import cloudpickle.cloudpickle as cp
    from nnsight.intervention.backends.local import LocalSimulationBackend
    from nnsight.ndif import pull_env
    from nnsight.schema.request import RequestModel

    pull_env()  # once per process: done now, so it registers nothing later
    kept = {m for m in cp._PICKLE_BY_VALUE_MODULES if m != "helpers" and not m.startswith("helpers.")}
    monkeypatch.setattr(cp, "_PICKLE_BY_VALUE_MODULES", kept)

    def serve(self, tracer):
        _push(tracer, _load(serve_like_ndif(RequestModel.serialize(tracer), self.model)))

    monkeypatch.setattr(LocalSimulationBackend, "__call__", serve)
