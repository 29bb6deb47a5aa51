"""benchmarks/live_resimulate.py: arm names to policies, and folders it cannot predict refused."""

from __future__ import annotations

import sys

import pytest

from benchmarks.live_resimulate import main, policy_of


def test_an_arms_repeats_share_its_policy_and_other_names_keep_theirs():
    assert policy_of("ray-default-2") == "ray-default"
    assert policy_of("coordinator-1") == "coordinator"
    assert policy_of("coordinator-mean-compute-12") == "coordinator-mean-compute"
    assert policy_of("coordinator") == "coordinator"  # a single run has no repeat number
    assert policy_of("coordinator-slots") == "coordinator-slots"


def test_a_folder_without_parity_records_or_a_missing_profile_is_refused(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(sys, "argv", ["live_resimulate.py", str(empty), "--out", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit):
        main()
    assert "holds no parity-ARM/parity.json" in capsys.readouterr().err
    kept = tmp_path / "kept"
    (kept / "parity-coordinator-1").mkdir(parents=True)
    (kept / "parity-coordinator-1" / "parity.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", ["live_resimulate.py", str(kept), "--out", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit):
        main()
    err = capsys.readouterr().err
    assert "no such profile" in err and str(kept / "profile.yaml") in err
    assert not (tmp_path / "o.json").exists()
