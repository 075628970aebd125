"""Eq 1.6 on the batch scan: α_N is a headline number only when the scan has >= 3 model sizes."""
from __future__ import annotations

import pytest

import report_synth_sweep as synth
from scaling.report.batch import section_lns
from scaling.report.document import Report
from scaling.report.loader import SweepResults


@pytest.mark.parametrize("sizes", [[1e5, 1e7], [1e5, 1e6, 1e7]])
def test_alpha_n_of_eq_1_6_needs_three_sizes_for_the_exponent_table(tmp_path, monkeypatch, sizes):
    monkeypatch.setattr(synth, "NS_N", sizes)
    root = str(tmp_path)
    synth.write_runs_csv(root, synth.ladder_runs(root, n_eval=10))
    synth.noise_files(root)
    rep = Report(SweepResults.load(root), n_boot=10, seed=0)
    text = "\n".join(section_lns(rep))
    symbols = [e["symbol"] for e in rep.exponents]
    assert "α_S (batch scan)" in symbols and "Eq. 1.6: α_N = " in text        # the fit itself is always reported
    assert ("α_N (eq 1.6, batch scan)" in symbols) == (len(sizes) >= 3)
    assert ("so α_N is not in the exponent table" in text) == (len(sizes) < 3)
