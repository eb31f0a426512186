"""AUROC of P(A) and judges side by side (a probe judge and the LLM judge of the same rounds)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from tournament_helpers import make_result

from debate_lightning.tournament.metrics import auroc, compute_metrics, judge_comparison
from debate_lightning.tournament.report import write_report
from debate_lightning.tournament.results import ResultsFile

LLM, PROBE = "embedded", "embedded+probe:-1"


def judged_by(judge: str, rows) -> list:
    """Rounds q0, q1, ... with (correct index, P(A)) per row, judged by ``judge``."""
    return [dataclasses.replace(make_result(f"q{k}", c, p), judge=judge) for k, (c, p) in enumerate(rows)]


def test_auroc_is_the_share_of_correctly_ordered_pairs():
    # A correct: P(A) 0.9, 0.6, 0.4; B correct: 0.5, 0.3. Pairs (A-round above B-round): 0.9 > both,
    # 0.6 > both, 0.4 > 0.3 only: 5 of 6.
    rs = judged_by("j", [(0, 0.9), (0, 0.6), (0, 0.4), (1, 0.5), (1, 0.3)])
    assert auroc(rs) == {"rounds": 5, "a_correct": 3, "auroc": pytest.approx(5 / 6)}
    # A tie counts half: 0.5 vs 0.5.
    assert auroc(judged_by("j", [(0, 0.5), (1, 0.5), (1, 0.2)]))["auroc"] == pytest.approx(0.75)
    # One answer only: no pair to order.
    assert math.isnan(auroc(judged_by("j", [(0, 0.9), (0, 0.1)]))["auroc"])


def test_auroc_per_format_in_the_metrics():
    # Debate: A correct at 0.9, 0.3; B at 0.2, 0.6: 0.9 > 0.2, 0.9 > 0.6, 0.3 > 0.2, 0.3 < 0.6: 3 of 4.
    debate = judged_by("j", [(0, 0.9), (1, 0.2), (0, 0.3), (1, 0.6)])
    consult = [dataclasses.replace(make_result(f"c{k}", c, p, kind="consultancy"), judge="j")
               for k, (c, p) in enumerate([(0, 0.8), (1, 0.1)])]
    m = compute_metrics(debate + consult, n_boot=50)
    assert m["auroc"]["by_format"]["debate"]["auroc"] == pytest.approx(0.75)
    assert m["auroc"]["by_format"]["consultancy0"]["auroc"] == pytest.approx(1.0)
    # Overall: A {0.9, 0.3, 0.8}, B {0.2, 0.6, 0.1}: misordered only 0.3 < 0.6: 8 of 9.
    assert m["auroc"]["overall"]["auroc"] == pytest.approx(8 / 9)
    assert m["judge_comparison"] is None  # one judge


# The probe: P(A) 0.95 (A correct), 0.75 (B), 0.15 (B), 0.35 (A). The LLM: 0.62, 0.38, 0.44, 0.57, all
# right, and a fifth round (q4) only the LLM judged.
PROBE_ROWS = [(0, 0.95), (1, 0.75), (1, 0.15), (0, 0.35)]
LLM_ROWS = [(0, 0.62), (1, 0.38), (1, 0.44), (0, 0.57), (0, 0.7)]


def test_judges_side_by_side_by_hand():
    c = judge_comparison({PROBE: judged_by(PROBE, PROBE_ROWS), LLM: judged_by(LLM, LLM_ROWS)})
    assert c["judges"] == [LLM, PROBE] and c["common_rounds"] == 4
    probe, llm = c["table"][PROBE], c["table"][LLM]
    assert probe["probe"] and not llm["probe"]
    assert (probe["rounds"], probe["rounds_judged"], llm["rounds"], llm["rounds_judged"]) == (4, 4, 4, 5)
    # Verdicts A, A, B, B against correct A, B, B, A.
    assert probe["binary_accuracy"] == 0.5 and llm["binary_accuracy"] == 1.0
    assert probe["prob_accuracy"] == pytest.approx((0.95 + 0.25 + 0.85 + 0.35) / 4)
    # A {0.95, 0.35} vs B {0.75, 0.15}: 0.35 < 0.75 the one misordered pair of 4.
    assert probe["auroc"] == pytest.approx(0.75) and llm["auroc"] == pytest.approx(1.0)
    # ECE, 10 bins, one round per bin: mean |1{A correct} - P(A)|.
    assert probe["ece"] == pytest.approx((0.05 + 0.75 + 0.15 + 0.65) / 4, abs=1e-6)
    assert llm["ece"] == pytest.approx((0.38 + 0.38 + 0.44 + 0.43) / 4, abs=1e-6)
    # Verdicts: probe A, A, B, B; LLM A, B, B, A: the same on q0 and q2. q4 was judged by the LLM only.
    assert c["agreement"] == [{"a": LLM, "b": PROBE, "rounds": 4, "agreement": 0.5}]


def test_no_comparison_without_a_round_judged_twice():
    assert judge_comparison({LLM: judged_by(LLM, LLM_ROWS)}) is None
    disjoint = [dataclasses.replace(r, round_id=r.round_id + "-other") for r in judged_by(PROBE, PROBE_ROWS)]
    assert judge_comparison({LLM: judged_by(LLM, LLM_ROWS), PROBE: disjoint}) is None


def _write(directory, rounds) -> None:
    results = ResultsFile(directory)
    for r in rounds:
        results.append(r)


def test_report_of_a_directory_with_both_judges(tmp_path):
    """A run and its probe rejudge combined in one rounds.jsonl: each judge's verdicts matched by round id."""
    _write(tmp_path / "both", judged_by(LLM, LLM_ROWS) + judged_by(PROBE, PROBE_ROWS))
    m = write_report(tmp_path / "both", n_boot=50, plots=False)
    saved = json.loads((tmp_path / "both" / "metrics.json").read_text())
    c = saved["judge_comparison"]
    assert c["table"][PROBE]["auroc"] == pytest.approx(0.75) and c["agreement"][0]["agreement"] == 0.5
    assert c["rejudge_source"] is None and m["auroc"]["overall"]["rounds"] == 5
    text = (tmp_path / "both" / "report.md").read_text()
    assert "## Judges side by side" in text and "| `embedded+probe:-1` | probe | 4 | 0.500 | 0.600 | 0.750 | 0.400 |" in text
    assert "| `embedded` | `embedded+probe:-1` | 4 | 0.500 |" in text
    assert "| format | rounds | binary accuracy | probabilistic accuracy | AUROC |" in text


def test_report_of_a_rejudge_directory_compares_with_the_source_run(tmp_path, monkeypatch):
    _write(tmp_path / "run", judged_by(LLM, LLM_ROWS))
    _write(tmp_path / "probe", judged_by(PROBE, PROBE_ROWS))
    # rejudge records its source as typed on its command line, relative to where it ran.
    (tmp_path / "probe" / "rejudge.json").write_text(json.dumps({"source": "run", "judge": PROBE}))
    monkeypatch.chdir(tmp_path)
    m = write_report(tmp_path / "probe", n_boot=50, plots=False)
    assert m["judges"] == [PROBE] and m["rounds"]["judged"] == 4  # the sections above: this directory's rounds
    c = m["judge_comparison"]
    assert c["rejudge_source"] == "run" and c["table"][LLM]["binary_accuracy"] == 1.0
    assert c["agreement"] == [{"a": LLM, "b": PROBE, "rounds": 4, "agreement": 0.5}]
    assert "rejudged run run" in (tmp_path / "probe" / "report.md").read_text()
    # Run from elsewhere, the source is found beside the rejudge directory.
    monkeypatch.chdir(tmp_path / "run")
    assert write_report(tmp_path / "probe", n_boot=50, plots=False)["judge_comparison"]["common_rounds"] == 4
