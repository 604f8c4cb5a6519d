"""The stamp that gates long checks (tests/stamps.py) covers every input of the check: a change in
any of them, or in any helpers module the check's code imports (transitively, imports inside
functions included), changes the digest, so the check runs again."""
from __future__ import annotations

from stamps import REPO, Stamp, helpers_closure


def test_the_closure_follows_imports_transitively_but_not_the_package_root():
    files = {str(p.relative_to(REPO)) for p in helpers_closure(["helpers.organism.train_ioi"])}
    assert {"helpers/organism/train_ioi.py", "helpers/organism/training.py",
            "helpers/data/prompts.py", "helpers/data/pairs.py", "helpers/base/validate.py"} <= files
    assert "helpers/__init__.py" not in files and "helpers/teach/plotting.py" not in files


def test_every_input_changes_the_digest(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("one")
    stamp = Stamp("example", modules=["helpers.data.prompts"], files=[str(data)])
    before = stamp.digest()
    assert "helpers/base/validate.py" in stamp.inputs() and "constraints.txt" in stamp.inputs()
    data.write_text("two")
    assert stamp.digest() != before


def test_a_stamp_matches_only_after_record_and_only_its_own_inputs(tmp_path, monkeypatch):
    import stamps

    monkeypatch.setattr(stamps, "STAMPS", tmp_path)
    monkeypatch.delenv("PATCHLAB_RUN_GATED", raising=False)
    data = tmp_path / "data.txt"
    data.write_text("one")
    stamp = Stamp("example", modules=["helpers.data.pairs"], files=[str(data)])
    assert stamp.stamped() is None
    stamp.record(0.0)
    assert stamp.stamped() == stamp.digest()
    data.write_text("two")
    assert stamp.stamped() != stamp.digest()
    monkeypatch.setenv("PATCHLAB_RUN_GATED", "example")
    assert stamp.forced()
