"""The rule nbval uses to compare stored and fresh notebook outputs (notebooks/conftest.py):
the last printed digit of a decimal may differ by one unit, integers and words may not."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "notebooks_conftest", Path(__file__).resolve().parent.parent / "notebooks" / "conftest.py")
rule = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rule)


@pytest.mark.parametrize("stored, fresh", [
    ("metrics -11.380754 and 0.000011", "metrics -11.380755 and 0.000011"),  # seen across CPUs
    ("score 0.74", "score 0.75"),
    ("-0.000  0.000", " 0.000  0.000"),          # a sign flip of zero widens a column
    ("x 4.4e-08", "x 4.5e-08"),
    ("1.00 ± 0.00", "1.00 ± 0.01"),
])
def test_last_digit_noise_in_decimals_matches(stored, fresh):
    assert rule.texts_match(stored, fresh)


@pytest.mark.parametrize("stored, fresh", [
    ("score 0.74", "score 0.76"),                # two units: a real change
    ("16 pairs", "17 pairs"),                    # integers are exact
    ("largest change 0", "largest change 4.4e-08"),  # noise must be printed as such, not as 0
    ("block 2 moves it", "block 3 moves it"),
    ("L2 0.31", "L3 0.31"),                      # a digit inside a word is text
    ("a 0.5 b", "a 0.5 c"),
    ("1.0 2.0", "1.0"),
])
def test_real_changes_do_not_match(stored, fresh):
    assert not rule.texts_match(stored, fresh)


def test_one_unit_is_taken_from_the_coarser_number():
    assert rule.numbers_match("0.7", "0.74") and not rule.numbers_match("0.7", "0.81")
