"""check_range: the in-cell check notebooks use for numbers that come from training."""

from __future__ import annotations

import json
import math

import pytest

from cxrkit.utils import CHECK_LOG_VARIABLE, check_range, printed_to_file


def test_inside_the_band_prints_and_returns_nothing(capsys, monkeypatch):
    monkeypatch.delenv(CHECK_LOG_VARIABLE, raising=False)
    assert check_range("val mAP", 0.2891, 0.2, 0.4) is None  # a cell ending with it shows no value
    assert capsys.readouterr().out == "val mAP: 0.289 (expected 0.2 to 0.4)\n"
    check_range("edge", 0.4, 0.2, 0.4)  # the band is closed


@pytest.mark.parametrize("value", [0.19, 0.41, math.nan, math.inf])
def test_outside_the_band_fails(value, monkeypatch):
    monkeypatch.delenv(CHECK_LOG_VARIABLE, raising=False)
    with pytest.raises(
        AssertionError, match=r"val mAP = .* outside the expected range \[0.2, 0.4\]"
    ):
        check_range("val mAP", value, 0.2, 0.4)


def test_log_mode_records_instead_of_raising(tmp_path, monkeypatch):
    log = tmp_path / "checks.jsonl"
    monkeypatch.setenv(CHECK_LOG_VARIABLE, str(log))
    check_range("a", 0.3, 0.2, 0.4)
    check_range("b", 0.9, 0.2, 0.4)  # outside: recorded, not raised
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["what"], r["value"], r["inside"]) for r in records] == [
        ("a", 0.3, True),
        ("b", 0.9, False),
    ]


def test_printed_to_file_keeps_the_screen_quiet_and_the_log_whole(tmp_path, capsys):
    log = tmp_path / "run" / "train.log"
    with pytest.raises(RuntimeError), printed_to_file(log):
        print("epoch 1/2 loss 0.5")
        raise RuntimeError("epoch 2 failed")  # the log still gets what was printed
    with printed_to_file(log):
        print("resumed")
    with printed_to_file(log, enabled=False):
        print("on the screen")
    assert capsys.readouterr().out == "on the screen\n"
    assert log.read_text() == "epoch 1/2 loss 0.5\nresumed\n"
