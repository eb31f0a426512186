"""A linear probe as the tournament judge: config, runner, rejudge, refusals, and end to end."""

from __future__ import annotations

import json

import pytest
import yaml
from probe_files import write_probe
from tournament_helpers import REPO, scripted_config

from debate_lightning.debate.agents import prompts_for
from debate_lightning.models.hf import HFGenerator
from debate_lightning.models.probe import LinearProbe
from debate_lightning.models.registry import ModelSpec, build_generator
from debate_lightning.tournament.cli import parse_tournament_args, rejudge_main, tournament_main
from debate_lightning.tournament.report import write_report
from debate_lightning.tournament.results import read_results

QUIET = ["--progress", "false", "--report", "false"]


def tiny_config(path, model_dir, **judge) -> str:
    cfg = {
        "data": {"source": "synthetic", "limit": 1, "both_orders": True},
        "models": {"tiny": {"backend": "hf", "path": str(model_dir), "dtype": "float32"}},
        "debaters": [{"name": "t", "model": "tiny", "max_new_tokens": 4}],
        "judge": {"model": "tiny", **judge},
        "formats": [{"kind": "debate", "num_speeches": 1}],
    }
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def probe_p_a(generator, probe: LinearProbe, result) -> float:
    """What the probe judge must give a round: the probe's P(A) over the hidden states of the judge
    chat in both orders, the swapped one read as 1 - P(A), averaged (``debate.agents.Judge``)."""
    tr = result.transcript()
    chats = [tr.judge_chat(prompts_for(tr.format), swap=s) for s in (False, True)]
    p = probe.p_a(generator.hidden_states([generator.chat_ids(c) for c in chats], probe.layers)).tolist()
    return (p[0] + 1 - p[1]) / 2


def test_judge_probe_on_the_command_line_and_in_yaml(tmp_path):
    cfg, _ = parse_tournament_args(["--config", "tournament_probe.yaml", "--judge.probe", str(tmp_path / "p")])
    assert cfg.judge.probe == str(tmp_path / "p") and cfg.judge.model == "embedded" and cfg.judge.probe_name is None
    shipped, _ = parse_tournament_args(["--config", str(REPO / "configs" / "tournament_probe.yaml")])
    assert shipped.judge.probe and shipped.judge.both_orders
    with pytest.raises(ValueError, match="judge.probe_name is '-1' but judge.probe is not set"):
        parse_tournament_args(["--judge.probe_name", "-1"])


def test_tournament_judged_by_a_probe_on_the_tiny_model(tmp_path, tiny_model_dir, tiny_generator):
    probe_dir = write_probe(tmp_path / "probe", str(tiny_model_dir), hidden=32, num_layers=2, layers=(-1, 1))
    cfg = tiny_config(tmp_path / "t.yaml", tiny_model_dir, probe=str(probe_dir), probe_name=-1)
    out = tmp_path / "out"
    assert tournament_main(["--config", cfg, "--output", str(out), *QUIET]) == 0
    rounds = read_results(out)
    assert len(rounds) == 2 and all(r.ok for r in rounds)
    probe = LinearProbe.load(probe_dir, name="-1")
    name = f"tiny+probe:-1@{probe.digest}"
    for r in rounds:
        assert r.judge == name and len(r.p_a_orders) == 2
        assert r.p_a == pytest.approx(probe_p_a(tiny_generator, probe, r), abs=1e-5)
        assert r.winner == (0 if r.p_a >= 0.5 else 1)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["judge"] == {"model": "tiny", "both_orders": True, "probe": str(probe_dir), "probe_name": -1}
    # Resuming with another probe would mix two judges in one file; a saved config from before
    # judge.probe existed still resumes a plain run.
    other = write_probe(tmp_path / "other", str(tiny_model_dir), hidden=32, num_layers=2, seed=1)
    assert tournament_main(["--config", cfg, "--output", str(out), "--judge.probe", str(other), "--resume", *QUIET]) == 2
    m = write_report(out, n_boot=20, plots=False)
    assert m["judges"] == [name] and m["auroc"]["overall"]["rounds"] == 2


def test_a_saved_config_without_judge_probe_resumes(tmp_path):
    cfg = scripted_config(tmp_path / "t.yaml")
    out = tmp_path / "out"
    assert tournament_main(["--config", str(cfg), "--output", str(out), *QUIET]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["judge"] = {"model": "r", "both_orders": True}  # as written before judge.probe existed
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    assert tournament_main(["--config", str(cfg), "--output", str(out), "--resume", *QUIET]) == 0


def test_wrong_probes_are_refused_naming_the_mismatch(tmp_path, tiny_model_dir, capsys):
    def run(probe, **judge) -> str:
        cfg = tiny_config(tmp_path / "t.yaml", tiny_model_dir, probe=str(probe), **judge)
        assert tournament_main(["--config", cfg, "--output", str(tmp_path / "out"), *QUIET]) == 2
        return capsys.readouterr().err

    err = run(tmp_path / "missing")
    assert "judge.probe: probe" in err and "missing: no such file" in err and "fit --config configs/probe.yaml" in err
    consult = write_probe(tmp_path / "c", str(tiny_model_dir), 32, 2, prompt_sets=("consultancy",))
    err = run(consult)
    assert "trained on judge chats of prompt set(s) ['consultancy']; the judged formats use ['debate']" in err
    other_model = write_probe(tmp_path / "e", "embedded", 32, 2)
    assert "trained on model 'embedded', the judge runs" in run(other_model)
    err = run(write_probe(tmp_path / "w", str(tiny_model_dir), 576, 2))
    assert "hidden_size 576" in err and "the judge's model has 32" in err
    deep = write_probe(tmp_path / "d", str(tiny_model_dir), 32, 2, layers=(-1, 5))
    assert "the model has 2 layers" in run(deep)
    assert "no probe '-7'" in run(write_probe(tmp_path / "n", str(tiny_model_dir), 32, 2), probe_name="-7")
    assert not (tmp_path / "out" / "rounds.jsonl").exists()


def test_rejudge_with_a_probe_and_the_report_side_by_side(tmp_path, tiny_model_dir, tiny_generator):
    src, new = tmp_path / "src", tmp_path / "new"
    assert tournament_main(["--config", str(scripted_config(tmp_path / "s.yaml")), "--output", str(src), *QUIET]) == 0
    probe_dir = write_probe(tmp_path / "probe", str(tiny_model_dir), hidden=32, num_layers=2)
    judge_yaml = tmp_path / "judge.yaml"
    judge_yaml.write_text(yaml.safe_dump({"models": {"tiny": {"backend": "hf", "path": str(tiny_model_dir),
                                                              "dtype": "float32"}},
                                          "judge": {"model": "tiny", "probe": str(probe_dir)}}))
    assert rejudge_main([str(src), "--config", str(judge_yaml), "--output", str(new), *QUIET]) == 0
    old, rejudged = read_results(src), read_results(new)
    assert {r.round_id for r in rejudged} == {r.round_id for r in old}
    probe = LinearProbe.load(probe_dir)
    name = f"tiny+probe:concat@{probe.digest}"
    for r in rejudged[:4]:
        assert r.judge == name
        assert r.p_a == pytest.approx(probe_p_a(tiny_generator, probe, r), abs=1e-5)
    assert json.loads((new / "rejudge.json").read_text())["judge"] == name
    # The report of the rejudged directory sets the probe beside the source run's judge.
    m = write_report(new, n_boot=20, plots=False)
    c = m["judge_comparison"]
    assert set(c["table"]) == {"r", name} and c["common_rounds"] == len(old) and c["table"][name]["probe"]
    same = sum(a.winner == b.winner for a, b in zip(sorted(old, key=lambda r: r.round_id),
                                                     sorted(rejudged, key=lambda r: r.round_id)))
    assert c["agreement"][0]["agreement"] == pytest.approx(same / len(old))
    # A resume with another probe would mix two judges' verdicts in one directory.
    other = write_probe(tmp_path / "other", str(tiny_model_dir), hidden=32, num_layers=2, seed=1)
    argv = [str(src), "--config", str(judge_yaml), "--output", str(new), "--resume", *QUIET]
    assert rejudge_main(argv) == 0  # the same probe: nothing left to do
    assert rejudge_main([*argv, "--judge.probe", str(other)]) == 2
    assert len(read_results(new)) == len(old)


def test_a_probe_needs_a_local_judge_model(tmp_path, capsys):
    probe_dir = write_probe(tmp_path / "probe", "embedded", hidden=576, num_layers=30)
    cfg = scripted_config(tmp_path / "t.yaml", judge={"model": "r", "probe": str(probe_dir)})
    assert tournament_main(["--config", str(cfg), "--output", str(tmp_path / "out"), *QUIET]) == 2
    assert "needs a local model (hf backend)" in capsys.readouterr().err


@pytest.mark.slow
def test_tournament_judged_by_a_probe_on_the_embedded_model(tmp_path):
    """End to end on the real model: 1 question in both orders, 8-token speeches, a random probe of
    SmolLM2-135M's size; every verdict is the probe's over the judge chats' hidden states."""
    probe_dir = write_probe(tmp_path / "probe", "embedded", hidden=576, num_layers=30, layers=(-1, -4))
    out = tmp_path / "out"
    argv = ["--config", "tournament_probe.yaml", "--judge.probe", str(probe_dir), "--output", str(out),
            "--data.limit", "1", "--debaters", '[{"name": "smollm2", "model": "embedded", "max_new_tokens": 8}]',
            "--models.embedded.dtype", "float32", "--progress", "false"]
    # float32: `dtype: auto` is bfloat16 on CPUs with AVX512-BF16, where a batched forward and a
    # one-chat forward differ by more than the tolerance below
    assert tournament_main(argv) == 0
    rounds = read_results(out)
    probe = LinearProbe.load(probe_dir)
    name = f"embedded+probe:concat@{probe.digest}"
    assert len(rounds) == 2 and all(r.ok and r.judge == name for r in rounds)
    cfg, _ = parse_tournament_args(["--config", "tournament_probe.yaml"])
    generator = build_generator(ModelSpec(**{**vars(cfg.models["embedded"]), "dtype": "float32"}), name="embedded")
    assert isinstance(generator, HFGenerator)
    for r in rounds:
        assert r.p_a == pytest.approx(probe_p_a(generator, probe, r), abs=1e-4)
    m = json.loads((out / "metrics.json").read_text())
    assert m["judges"] == [name] and m["auroc"]["overall"]["rounds"] == 2
    assert "| format | rounds | binary accuracy | probabilistic accuracy | AUROC |" in (out / "report.md").read_text()
