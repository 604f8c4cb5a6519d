"""NDIF (nnsight remote execution) without a server: every traced helper survives the trip.

Three ways to run a model's traces here, each stricter than the last:

* ``load_model(name, remote="local")`` sends every trace through nnsight 0.8's own dry run of
  the remote protocol (``model.trace(..., remote="local")``, ``LocalSimulationBackend``): the
  body is serialised and deserialised, then run in this process against the caller's own
  objects.  The results must equal the plain local run's (float64, 1e-10).
* ``strict``: the same ``remote="local"`` traces, but each one is served the way an NDIF worker
  serves a request (``serve_like_ndif``): the deserialised copy of the body runs against the
  deserialised copies of its variables, only ``.save()``d names come back (through
  ``torch.save``/``torch.load``), and the ``helpers`` package is *hidden* meanwhile: every
  ``helpers*`` entry of ``sys.modules`` is replaced by a module that raises on any attribute
  access, and importing one raises.  A body that calls into helpers (or carries a helpers
  object, e.g. a ``ModelAnatomy``) fails; a body that fills a list made outside it leaves that
  list empty.  nnsight's own dry run catches neither here: it hides only modules that are not
  installed, and runs the body on the caller's own objects; ``helpers`` is installed (here
  editable), so unpickling re-imports it
  (``test_nnsights_dry_run_alone_misses_what_the_strict_check_catches``).
* ``remote=True``: a model built without weights from a folder holding only config.json and
  the tokenizer, whose requests go through nnsight's own ``RemoteBackend`` (model key, zstd,
  result download and push-back) to a stand-in NDIF: only ``RemoteBackend.request``, the
  network exchange, is replaced by ``serve_like_ndif`` against a weighted copy of the same
  model (the server's model).

What none of this proves (server availability, its package versions, its memory and time
limits, its sandbox) is listed in the README section "Scaling up: NDIF".
"""
from __future__ import annotations

import shutil
import sys
import warnings

import pytest
import torch
from ndif_local import HelpersReached, Hidden, serve_like_ndif
from tiny_models import save_random_model

import helpers as H
from helpers.methods.attribution import attribution_patching
from helpers.methods.sweeps import Patch
from helpers.models import ModelLoadError, hf_model, load_model, remote_mode
from helpers.results.metrics import logit_diff

TOL = 1e-10
HUB_ID = "meta-llama/Llama-3.1-8B"


# --------------------------------------------------------------------------- models and pairs

@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("remote") / "llama", "llama", seed=3)


@pytest.fixture(scope="module")
def models(llama_dir):
    """{name: (local float64 model, the same with remote="local", prompt pairs)}."""
    out = {}
    for name, where in (("ioi-tiny", "ioi-tiny"), ("llama", llama_dir)):
        local = load_model(where, dtype="float64")
        dry = load_model(where, dtype="float64", remote="local")
        out[name] = (local, dry, H.ioi_pairs(local.tokenizer, n=2, seed=5))
    return out


def _same(a, b, what: str) -> None:
    assert a.dims == b.dims and a.labels == b.labels, what
    for m, v in b.values.items():  # b may compute fewer metrics (metrics=("logit_diff",))
        diff = (a.values[m] - v).abs().max().item()
        assert diff < TOL, f"{what} {m}: differs by {diff}"
    for run in ("clean", "corrupted"):
        for m, v in getattr(a, run).items():
            assert (v - getattr(b, run)[m]).abs().max().item() < TOL, f"{what} {run} {m}"


SWEEPS = {
    "resid-denoise": lambda m, p: H.patch_residual(m, p),
    "resid-noise": lambda m, p: H.patch_residual(m, p, "noise"),
    "attn": lambda m, p: H.patch_attn_out(m, p),
    "mlp-noise": lambda m, p: H.patch_mlp_out(m, p, "noise"),
    "heads": lambda m, p: H.patch_heads(m, p),
    "heads-by-position": lambda m, p: H.patch_heads(m, p, by_position=True),
    "components": lambda m, p: H.patch_components(m, p, [[Patch("head", 1, -1, 2), Patch("mlp", 0, -1)],
                                                          [Patch("attn", 1, None)]]),
    "sweep-two-logits": lambda m, p: H.sweep(m, p, [[Patch("resid", 0, -2)], [Patch("embed", position=-1)]],
                                             "noise", metrics=("logit_diff",)),
}


def _check_everything(models, name):
    """Every sweep, attribution patching, top predictions and attention patterns of the
    remote="local" model equal the local model's."""
    local, dry, pairs = models[name]
    for label, run in SWEEPS.items():
        a, b = run(local, pairs), run(dry, pairs)
        _same(a, b, f"{name} {label}")
        assert b.method == "batched" and b.remote == "local", label
    a, b = attribution_patching(local, pairs), attribution_patching(dry, pairs)
    for key in a:
        _same(a[key], b[key], f"{name} attribution {key}")
    assert H.top_predictions(local, pairs.clean[0]) == H.top_predictions(dry, pairs.clean[0])
    prompts = H.random_ioi_prompts(3, seed=2)
    assert H.ioi_accuracy(local, prompts) == H.ioi_accuracy(dry, prompts)
    for layer in (0, -1):
        pa = H.attention_patterns(local, pairs.clean_ids, layer)
        pb = H.attention_patterns(dry, pairs.clean_ids, layer)
        assert pa.shape == pb.shape and (pa - pb).abs().max().item() < TOL


@pytest.mark.parametrize("name", ["ioi-tiny", "llama"])
def test_every_traced_helper_matches_locally_through_nnsights_dry_run(models, name):
    assert remote_mode(models[name][1]) == "local"
    _check_everything(models, name)


@pytest.mark.parametrize("name", ["ioi-tiny", "llama"])
def test_every_traced_helper_runs_as_ndif_would_with_helpers_hidden(models, name, strict):
    _check_everything(models, name)


def test_a_non_finite_forward_pass_is_located_through_the_remote_path(llama_dir, strict, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(llama_dir, broken)
    model = load_model(broken, remote="local")
    with torch.no_grad():
        hf_model(model).model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    pairs = H.ioi_pairs(model.tokenizer, n=1, seed=1)
    with pytest.raises(H.validate.NonFiniteError, match=r"block 1 MLP output"):
        H.patch_residual(model, pairs)


# --------------------------------------------------------------------------- the check itself

def _bad_bodies(model, pairs):
    """Three trace bodies that break the rules, each returning what it saved."""
    facts = H.model_facts(model)
    unembed = facts.unembed(model)
    ids, a, d = pairs.clean_ids, pairs.answer_ids, pairs.distractor_ids

    def calls_a_helper():
        with model.trace(ids, remote="local"):
            ld = logit_diff(unembed.output[:, -1], a, d).save()  # helpers.results.metrics inside
        return ld

    def carries_a_helpers_object():
        with model.trace(ids, remote="local"):
            last = facts.unembed(model).output[:, -1].save()  # a ModelAnatomy inside
        return last

    outside = []

    def fills_a_list_made_outside():
        with model.trace(ids, remote="local"):
            outside.append(unembed.output[:, -1].clone())
            done = unembed.output.shape[0]  # noqa: F841 (nothing saved)
        return outside

    return calls_a_helper, carries_a_helpers_object, fills_a_list_made_outside


def test_the_strict_check_fails_a_body_that_uses_helpers_or_fills_an_outside_list(models, strict):
    _, dry, pairs = models["ioi-tiny"]
    calls, carries, fills = _bad_bodies(dry, pairs)
    with pytest.raises(HelpersReached, match="helpers.results.metrics.logit_diff"):
        calls()
    with pytest.raises(HelpersReached, match="helpers.models.anatomy"):
        carries()
    assert fills() == []  # as on NDIF: the server's copy of the list was filled, not this one
    assert "helpers" in sys.modules and not isinstance(sys.modules["helpers"], Hidden)


def test_nnsights_dry_run_alone_misses_what_the_strict_check_catches(models):
    _, dry, pairs = models["ioi-tiny"]
    calls, carries, fills = _bad_bodies(dry, pairs)
    assert calls().shape == (len(pairs),)
    assert carries().shape[0] == len(pairs)
    assert len(fills()) == 1


# --------------------------------------------------------------------------- remote=True

FAKE_STATUS = {"deployments": {"llama-8b": {"repo_id": HUB_ID, "deployment_level": "HOT",
                                            "application_state": "RUNNING"},
                               "gpt2": {"repo_id": "openai-community/gpt2", "deployment_level": "WARM",
                                        "application_state": "RUNNING"}}}


@pytest.fixture
def ndif_key(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)


@pytest.fixture
def config_only(llama_dir, tmp_path):
    """The tiny Llama's config.json and tokenizer, without weights."""
    folder = tmp_path / "llama-config"
    folder.mkdir()
    for f in llama_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, folder / f.name)
    return folder


def test_a_remote_model_runs_every_helper_on_a_stand_in_ndif(models, config_only, ndif_key, monkeypatch,
                                                             helpers_by_reference):
    from nnsight.intervention.backends.remote import RemoteBackend

    monkeypatch.setattr(H.remote, "_ndif_status", lambda: FAKE_STATUS)
    model = load_model(config_only, remote=True, ndif_id=HUB_ID.lower())
    facts = H.model_facts(model)
    assert remote_mode(model) is True and facts.name == HUB_ID and facts.family == "llama"
    assert all(p.device.type == "meta" for p in hf_model(model).parameters())
    assert '"repo_id": "meta-llama/Llama-3.1-8B"' in model.to_model_key()
    assert not any(k.startswith("_patchlab") for k in model.__dict__)  # nothing helpers on the wire

    server, _, pairs = models["llama"]  # the same weights, float64: NDIF's model
    requests = []

    def ndif(self, request, tracer):  # RemoteBackend.request without the network
        assert request.model_key == model.to_model_key() and self.api_key == "test-key"
        assert request.env.get("attn_implementation") == "eager"
        blob = self._serialize(tracer)  # nnsight's own client side: pull_env, zstd
        result = self.finalize(serve_like_ndif(blob, server, request.env, request.compress))
        requests.append(sorted(result))
        return result

    monkeypatch.setattr(RemoteBackend, "request", ndif)
    for direction in ("denoise", "noise"):
        a, b = H.patch_residual(server, pairs, direction), H.patch_residual(model, pairs, direction)
        _same(a, b, f"remote resid {direction}")
        assert b.remote is True and b.method == "batched" and b.model_name == HUB_ID
    _same(H.patch_heads(server, pairs), H.patch_heads(model, pairs, metrics=("logit_diff",)),
          "remote heads")
    a, b = attribution_patching(server, pairs), attribution_patching(model, pairs)
    for key in a:
        _same(a[key], b[key], f"remote attribution {key}")
    assert H.top_predictions(server, pairs.clean[0]) == H.top_predictions(model, pairs.clean[0])
    assert (H.attention_patterns(server, pairs.clean_ids, 1)
            - H.attention_patterns(model, pairs.clean_ids, 1)).abs().max() < TOL
    assert requests and all(p.device.type == "meta" for p in hf_model(model).parameters())
    with pytest.raises(ValueError, match="one request per patch"):
        H.patch_residual(model, pairs, method="loop")


# --------------------------------------------------------------------------- load errors

def test_no_api_key_says_where_to_get_one(config_only, monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(ModelLoadError, match=r"login\.ndif\.us.*NDIF_API_KEY"):
        load_model(config_only, remote=True, ndif_id=HUB_ID)


def test_a_model_ndif_does_not_run_is_refused_with_what_it_runs(config_only, ndif_key, monkeypatch):
    monkeypatch.setattr(H.remote, "_ndif_status", lambda: FAKE_STATUS)
    with pytest.raises(ModelLoadError, match=r"does not run 'org/tiny'.*openai-community/gpt2"):
        load_model(config_only, remote=True, ndif_id="org/tiny")


def test_a_model_ndif_has_but_does_not_run_now_warns(config_only, ndif_key, monkeypatch):
    status = {"deployments": {"x": {"repo_id": HUB_ID, "deployment_level": "COLD",
                                    "application_state": "NOT_STARTED"}}}
    monkeypatch.setattr(H.remote, "_ndif_status", lambda: status)
    with pytest.warns(UserWarning, match="not running now"):
        load_model(config_only, remote=True, ndif_id=HUB_ID)


def test_ndif_out_of_reach_is_said_so(config_only, ndif_key, monkeypatch):
    import nnsight.ndif

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(nnsight.ndif, "_get", offline)
    with pytest.raises(ModelLoadError, match="could not reach NDIF"):
        load_model(config_only, remote=True, ndif_id=HUB_ID)


def test_a_gated_config_asks_for_a_hugging_face_token(ndif_key, monkeypatch):
    import transformers

    def gated(*args, **kwargs):
        raise OSError("You are trying to access a gated repo.\nMake sure to have access to it at "
                      f"https://huggingface.co/{HUB_ID}.\n401 Client Error.")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", gated)
    with pytest.raises(ModelLoadError, match=r"gated.*HF_TOKEN"):
        load_model(HUB_ID, remote=True)


def test_no_network_for_the_hub_config_is_said_so(ndif_key):
    with pytest.raises(ModelLoadError, match="needs the network"):
        load_model(HUB_ID, remote=True)  # the tests run with HF_HUB_OFFLINE=1


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="ioi-tiny", remote=True), "remote='local'"),
    (dict(name=HUB_ID, remote=True, dtype="bfloat16"), "leave device= and dtype= unset"),
    (dict(name="ioi-tiny", ndif_id=HUB_ID), "only applies with remote=True"),
])
def test_remote_arguments_that_cannot_work_are_refused(kwargs, match, ndif_key):
    with pytest.raises(ModelLoadError, match=match):
        load_model(kwargs.pop("name"), **kwargs)


def test_a_remote_mode_that_does_not_exist_is_refused_listing_the_three():
    with pytest.raises(ValueError, match="remote='yes' is not a valid choice.*False, True, 'local'"):
        load_model("ioi-tiny", remote="yes")


def test_a_folder_needs_the_hub_id_ndif_runs(config_only, ndif_key):
    with pytest.raises(ModelLoadError, match="ndif_id="):
        load_model(config_only, remote=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelLoadError, match="hub id 'organisation/name'"):
            load_model(config_only, remote=True, ndif_id="not-a-hub-id")


def test_attention_without_weights_is_reported_through_the_remote_path(llama_dir, strict):
    model = load_model(llama_dir, remote="local")
    hf_model(model).set_attn_implementation("sdpa")  # returns no attention weights
    with pytest.raises(RuntimeError, match="returns no weights"):
        H.attention_patterns(model, torch.tensor([[1, 2, 3]]), 0)
