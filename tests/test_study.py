"""The debate-training study (scripts/debate_training.sh + debate_lightning/study/): its configs
plan, its errors say what, and the whole pipeline runs on the tiny random Llama at a size below
``tiny``: every stage once, a kill mid-run resumed without redoing finished stages, a probe
judge beside the LLM judge, and a report whose numbers are metrics.json's."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from probe_files import write_probe

from debate_lightning.study import plan
from debate_lightning.study.plan import StudyConfigError, load_study_config, stage_names, write_plan
from debate_lightning.study.report import mde_one_proportion, mde_two_proportions

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "debate_training.sh"
ENV = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}


def _script(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=ENV, capture_output=True, text=True, **kw)


# --------------------------------------------------------------------------- configs and errors


@pytest.mark.parametrize("size", plan.SIZES)
def test_every_size_plans_a_chain_of_checkpoints(tmp_path, size):
    cfg, merged = load_study_config(size)
    out = tmp_path / size
    write_plan(out, cfg, merged)
    plan.check_tournament_configs(out.resolve(), cfg)
    k = cfg.dpo_rounds
    assert stage_names(cfg)[:3] == ["sft", "selfplay_1", "dpo_1"] and stage_names(cfg)[-2:] == ["eval", "report"]
    # Each DPO round starts from the previous checkpoint and trains on its own self-play's pairs.
    for i in range(1, k + 1):
        fit = yaml.safe_load((out / f"dpo_{i}" / "fit.yaml").read_text())
        start = "sft" if i == 1 else f"dpo_{i - 1}"
        assert fit["model"]["init_args"]["policy"]["adapter"] == str(plan.adapter_dir(out.resolve(), start))
        assert fit["data"]["init_args"]["train"] == [str(out.resolve() / f"selfplay_{i}" / "preferences.jsonl")]
        sp = yaml.safe_load((out / f"selfplay_{i}" / "tournament.yaml").read_text())
        assert sp["models"]["policy"]["adapter"] == str(plan.adapter_dir(out.resolve(), start))
        assert sp["preferences"]["mode"] == "best_of_n" and sp["debaters"][0]["best_of_n"] >= 2
        assert sp["data"]["split"] == "train"
    ev = yaml.safe_load((out / "eval" / "tournament.yaml").read_text())
    assert [d["name"] for d in ev["debaters"]] == ["base", "sft"] + [f"dpo_{i}" for i in range(1, k + 1)]
    assert "adapter" not in ev["models"]["base"] and ev["data"]["split"] != "train" and ev["data"]["both_orders"]
    assert {f["kind"] for f in ev["formats"]} == {"debate", "consultancy", "empty"}


def test_small_and_paper_name_the_cluster_models_and_the_human_debates():
    for size in ("small", "paper"):
        cfg, _ = load_study_config(size)
        assert cfg.model != "embedded" and cfg.evaluation.data["source"] == "quality"
        assert cfg.sft.args["data.init_args.human_debates"]


def test_bad_inputs_are_errors_that_say_what(tmp_path):
    r = _script(str(tmp_path / "o"), "--size", "huge")
    assert r.returncode == 2 and "--size 'huge': unknown size; choose one of tiny, small, paper" in r.stderr
    r = _script(str(tmp_path / "o"), "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml: no such file" in r.stderr
    r = _script()
    assert r.returncode == 2 and "usage:" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("selfplay: {debatr: {best_of_n: 2}}\n")
    with pytest.raises(StudyConfigError, match=r"selfplay.debatr: unknown key"):
        load_study_config("tiny", str(bad))
    bad.write_text("selfplay: {debater: {best_of_n: 1}}\n")
    with pytest.raises(StudyConfigError, match="best_of_n >= 2"):
        load_study_config("tiny", str(bad))
    bad.write_text("evaluation: {formats: [{kind: debat}]}\n")
    cfg, merged = load_study_config("tiny", str(bad))
    write_plan(tmp_path / "p", cfg, merged)
    with pytest.raises(StudyConfigError, match=r"eval/tournament.yaml \(from the study config's evaluation keys\)"):
        plan.check_tournament_configs((tmp_path / "p").resolve(), cfg)


def test_a_study_directory_refuses_another_config(tmp_path):
    cfg, merged = load_study_config("tiny")
    write_plan(tmp_path, cfg, merged)
    write_plan(tmp_path, cfg, merged)  # the same config again: a resume
    other = tmp_path / "k3.yaml"
    other.write_text("dpo_rounds: 3\n")
    cfg3, merged3 = load_study_config("tiny", str(other))
    with pytest.raises(StudyConfigError, match=r"another config \(differs in: dpo_rounds\)"):
        write_plan(tmp_path, cfg3, merged3)


def test_minimal_detectable_effects_match_hand_values():
    # (1.959964 + 0.841621) * sqrt(2 * 0.25 / 100) and * sqrt(0.25 / 100)
    assert mde_two_proportions(100) == pytest.approx(0.198101, abs=1e-5)
    assert mde_one_proportion(100) == pytest.approx(0.140079, abs=1e-5)
    assert mde_two_proportions(400) == pytest.approx(mde_two_proportions(100) / 2)


# --------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model_dir) -> Path:
    """The pipeline below tiny size on the tiny random Llama (K = 1: every stage once; the chain of
    K > 1 is planned above), killed during dpo_1 and rerun."""
    root = tmp_path_factory.mktemp("study")
    probe = write_probe(root / "probe", model=str(tiny_model_dir), hidden=32, num_layers=2,
                        prompt_sets=("debate", "consultancy", "empty"))
    model = {"dtype": "float32", "device": "cpu", "max_batch_size": 16}
    config = {
        "model": str(tiny_model_dir), "model_options": model,
        "judge": {"backend": "hf", "path": str(tiny_model_dir), **model}, "probe": str(probe), "dpo_rounds": 1,
        "sft": {"args": {"data.init_args.results": ["synthetic:4"], "data.init_args.batch_size": 2,
                         "trainer.max_steps": 2}},
        "selfplay": {"data": {"limit": 1}, "debater": {"max_new_tokens": 6, "best_of_n": 2}},
        "dpo": {"args": {"data.init_args.batch_size": 2, "trainer.max_steps": 2}},
        "evaluation": {"data": {"limit": 2}, "debater": {"max_new_tokens": 6}},
        "report": {"bootstrap": 50},
    }
    (root / "test.yaml").write_text(yaml.safe_dump(config))
    out = root / "out"
    log = out / "stages.log"
    first = subprocess.Popen(["bash", str(SCRIPT), str(out), "--config", str(root / "test.yaml")], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (log.is_file() and "start dpo_1" in log.read_text()):
        assert first.poll() is None, f"the first run ended before dpo_1: {first.stderr.read()[-3000:]}"
        assert time.time() < deadline, "dpo_1 did not start within 300 s"
        time.sleep(0.2)
    time.sleep(1.0)  # let the fit get going
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = _script(str(out), "--config", str(root / "test.yaml"), timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    return out


def _events(out: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()[1:3]) for line in (out / "stages.log").read_text().splitlines()
            if line.split()[1] in ("start", "done", "skip")]


def test_a_killed_run_resumes_at_the_killed_stage_without_redoing_finished_ones(study):
    events = _events(study)
    for name in ("sft", "selfplay_1"):
        assert events.count(("start", name)) == 1 and events.count(("done", name)) == 1
        assert ("skip", name) in events
    # dpo_1 was killed (started twice, finished once); every later stage ran exactly once.
    assert events.count(("start", "dpo_1")) == 2 and events.count(("done", "dpo_1")) == 1
    later = ["eval", "eval_probe", "report"]
    assert [n for e, n in events if e == "start" and n in later] == later
    # The killed fit resumed into its own directory, and its adapter is where the next stage looks.
    assert (study / "dpo_1" / "train" / "run" / "adapter").is_dir()
    assert (study / "dpo_1" / "train" / "run" / "checkpoints" / "last.ckpt").is_file()


def test_every_stage_ran_and_left_its_command_and_config(study):
    for name in ("sft", "selfplay_1", "dpo_1", "eval", "eval_probe", "report"):
        assert (study / name / "done").is_file()
        command = (study / name / "command.sh").read_text()
        assert str(study / name) in command or name == "report"
    for name in ("sft", "dpo_1"):
        assert (study / name / "train" / "run" / "config.yaml").is_file()  # fit's resolved config
        assert (study / name / "train" / "run" / "adapter" / "adapter_model.safetensors").is_file()
    for name in ("selfplay_1",):
        assert (study / name / "config.yaml").is_file()
        pairs = (study / name / "preferences.jsonl").read_text().splitlines()
        assert pairs and {"prompt", "chosen", "rejected"} <= set(json.loads(pairs[0]))
    # Each training stage changed the weights it started from.
    from safetensors.torch import load_file
    tensors = [load_file(study / n / "train" / "run" / "adapter" / "adapter_model.safetensors") for n in ("sft", "dpo_1")]
    for before, after in zip(tensors, tensors[1:]):
        assert any(not (before[k] == after[k]).all() for k in before)


def test_the_evaluation_covers_every_checkpoint_format_and_side_order(study):
    rounds = [json.loads(line) for line in (study / "eval" / "rounds.jsonl").read_text().splitlines()]
    names = ["base", "sft", "dpo_1"]
    kinds = {(r["format"]["kind"], tuple(r["debaters"])) for r in rounds if r["status"] == "ok"}
    for c in names:
        assert ("debate", (c, c)) in kinds and ("consultancy", (c, "")) in kinds and ("consultancy", ("", c)) in kinds
    assert ("debate", ("base", "dpo_1")) in kinds and ("debate", ("dpo_1", "sft")) in kinds and ("empty", ("", "")) in kinds
    # Two questions, both side orders: 4 rounds per self-play cell.
    assert sum(1 for r in rounds if r["format"]["kind"] == "debate" and r["debaters"] == ["sft", "sft"]) == 4


def test_the_report_numbers_are_metrics_json(study):
    m = json.loads((study / "metrics.json").read_text())
    report = (study / "report.md").read_text()
    for section in ("## Judge accuracy by format", "## Judge accuracy by debater checkpoint",
                    "## Judge accuracy against debater rating", "## Debate minus consultancy", "## Calibration by format",
                    "## Probe judge", "## What this run can and cannot show"):
        assert section in report
    for png in ("accuracy_by_checkpoint", "accuracy_vs_rating", "debate_minus_consultancy", "calibration"):
        assert f"]({png}.png)" in report and (study / f"{png}.png").stat().st_size > 1000

    def f(x):
        return "–" if x is None else f"{x:.3f}"

    def ci(s):
        return f"{f(s['mean'])} [{f(s['ci'][0])}, {f(s['ci'][1])}]"

    rows = {tuple(c.strip() for c in line.strip("|").split("|")) for line in report.splitlines() if line.startswith("| ")}
    for c, a in m["accuracy_by_checkpoint"].items():
        for kind in ("debate", "consultancy"):
            assert (c, kind, str(a[kind]["rounds"]), ci(a[kind]["binary"]), ci(a[kind]["prob"])) in rows
    for c, d in m["debate_minus_consultancy"].items():
        x = d["binary"]
        assert (c, str(d["questions"]), f(x["debate"]), f(x["consultancy"]), f(x["difference"]),
                f"[{f(x['ci'][0])}, {f(x['ci'][1])}]", f(x["p_two_sided"])) in rows
    for k, cal in m["calibration_by_format"].items():
        assert (k, str(cal["rounds"]), f(cal["ece"]), f(cal["ece_top_label"])) in rows
    bt = m["bradley_terry"]
    assert set(bt["ratings"]) == {"base", "sft", "dpo_1"}
    for c, r in bt["ratings"].items():
        assert any(row[0] == c and row[1] == f"{r['elo']:.0f}" for row in rows)
    probe = m["probe"]
    assert probe["judge"].startswith("judge+probe:") and probe["comparison"] is not None
    for k, a in probe["accuracy_by_format"].items():
        assert (k, ci(m["accuracy_by_format"][k]["binary"]), ci(a["binary"])) in rows
    # The power paragraph: n is the smallest cell's questions, and its MDEs are the formula's.
    w = m["power"]
    assert w["questions_per_cell"] == 2
    assert w["mde_between_cells"] == pytest.approx(mde_two_proportions(2))
    assert f"**{f(w['mde_between_cells'])}**" in report and f"**{f(w['mde_vs_chance'])}**" in report
    # The headline numbers agree with the evaluation tournament's own metrics.json.
    own = json.loads((study / "eval" / "metrics.json").read_text())
    for k, a in m["accuracy_by_format"].items():
        assert a["binary"]["mean"] == pytest.approx(own["accuracy"]["by_format"][k]["binary"]["mean"])


def test_a_stage_reruns_by_hand_from_its_command(study):
    before = json.loads((study / "metrics.json").read_text())
    (study / "report.md").unlink()
    r = subprocess.run(["bash", str(study / "report" / "command.sh")], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((study / "metrics.json").read_text())["accuracy_by_checkpoint"] == before["accuracy_by_checkpoint"]
    assert (study / "report.md").is_file()


def test_a_finished_study_reruns_nothing(study):
    n = len(_events(study))
    r = _script(str(study), "--config", str(study.parent / "test.yaml"), timeout=120)
    assert r.returncode == 0, r.stderr
    new = _events(study)[n:]
    assert new and all(e == "skip" for e, _ in new)
    assert re.search(r"skip report", (study / "stages.log").read_text())
