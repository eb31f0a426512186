"""Linear-probe judges: ``ProbeJudgeModule`` on ``ActivationDataModule``.

Synthetic stores (written per the store format of ``tournament/activations.py``) test the maths
and the files; the tiny random Llama tests the on-the-fly rounds through the real CLI.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from debate_lightning.models.probe import LinearProbe
from debate_lightning.training.activation_data import ActivationDataModule, split_by_story
from debate_lightning.training.losses import probe_loss
from debate_lightning.training.probe import ProbeJudgeModule, evaluate
from probe_files import write_store

LAYERS = [-1, -2, -3]
HIDDEN = 16


def planted(n: int = 2000, stories: int = 500, strength: float = 4.0, seed: int = 0):
    """Noise activations where layer -2 (position 1) carries the label along one direction."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, len(LAYERS), HIDDEN, generator=g) * 2.0 + 3.0  # not standardised: the module must do it
    direction = torch.randn(HIDDEN, generator=g)
    x[:, 1] += strength * (2 * y[:, None].float() - 1) * direction / direction.norm()
    return x, y.tolist(), [f"s{i % stories}" for i in range(n)]


def fit(store: Path, root: Path, epochs: int = 60) -> tuple[ProbeJudgeModule, ActivationDataModule, Path]:
    L.seed_everything(0)
    dm = ActivationDataModule(activations=str(store), layers="all", val_fraction=0.25, seed=0, batch_size=4096)
    module = ProbeJudgeModule(lr=0.05, weight_decay=0.01)  # 1500 train rows: little regularisation needed
    trainer = L.Trainer(default_root_dir=root, max_epochs=epochs, logger=CSVLogger(root, name="probe"),
                        accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, check_val_every_n_epoch=epochs, num_sanity_val_steps=0,
                        log_every_n_steps=1)
    trainer.fit(module, datamodule=dm)
    return module, dm, Path(trainer.log_dir)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    x, y, stories = planted()
    return fit(write_store(tmp / "store", x, y, stories), tmp / "root")


def test_probe_loss_is_mean_bce_plus_half_weight_decay_times_squared_norm():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    labels = torch.tensor([1.0, 0.0])
    loss = probe_loss(logits, labels, torch.tensor([4.0, 0.0]), weight_decay=0.5)
    # BCE(z, 1) = log(1 + e^-z), BCE(z, 0) = log(1 + e^z)
    probe0 = (math.log(2.0) + math.log1p(math.exp(1.0))) / 2 + 0.5 / 2 * 4.0
    probe1 = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    by_hand = torch.tensor([probe0, probe1])
    torch.testing.assert_close(loss, by_hand)


def test_planted_signal_is_found_in_its_layer_and_the_concat(planted_run):
    module, dm, run_dir = planted_run
    meta = json.loads((run_dir / "probe.json").read_text())
    assert module.names == ["-1", "-2", "-3", "concat"]
    assert meta["val"]["-2"]["auroc"] >= 0.95 and meta["val"]["concat"]["auroc"] >= 0.95
    assert meta["best"] in ("-2", "concat")
    for noise in ("-1", "-3"):  # layers without the direction stay at chance
        assert abs(meta["val"][noise]["auroc"] - 0.5) <= 0.1
    assert meta["data"]["val_rows"] + meta["data"]["train_rows"] == 2000
    # the standardisation is the train rows', not the validation's or all rows'
    torch.testing.assert_close(module.sweep.mean, dm.train_x.mean(0))


def test_shuffled_labels_stay_at_chance(tmp_path):
    x, y, stories = planted()
    shuffled = [y[i] for i in torch.randperm(len(y), generator=torch.Generator().manual_seed(1)).tolist()]
    _, _, run_dir = fit(write_store(tmp_path / "store", x, shuffled, stories), tmp_path / "root")
    val = json.loads((run_dir / "probe.json").read_text())["val"]
    assert set(val) == {"-1", "-2", "-3", "concat"}
    for name, m in val.items():
        assert abs(m["auroc"] - 0.5) <= 0.1, (name, m)


def test_metrics_land_in_metrics_csv_and_files_beside_the_run(planted_run, tmp_path_factory):
    module, dm, run_dir = planted_run
    root = run_dir.parents[1]
    assert run_dir.is_relative_to(root) and root.name == "root"
    for name in ("probe.safetensors", "probe.json", "probe_report.md", "probe_auroc.png", "metrics.csv"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    last = [r for r in rows if r.get("probe/-2/auroc")][-1]
    for name in module.names:
        for metric in ("auroc", "accuracy", "ece", "brier"):
            assert f"probe/{name}/{metric}" in last
    meta = json.loads((run_dir / "probe.json").read_text())
    assert float(last["probe/-2/auroc"]) == pytest.approx(meta["val"]["-2"]["auroc"], abs=1e-6)  # last val = the files'
    report = (run_dir / "probe_report.md").read_text()
    assert "| -2 " in report and "| concat " in report and "LLM judge" in report and "probe_auroc.png" in report
    assert f"| {meta['data']['train_rows']} | {meta['data']['val_rows']} |" in report


def test_probe_files_round_trip_through_linear_probe(planted_run):
    module, dm, run_dir = planted_run
    meta = json.loads((run_dir / "probe.json").read_text())
    assert meta["layers"] == LAYERS and meta["format_version"] == 1 and meta["model"] == "embedded"
    assert meta["probes"] == {"-1": {"layers": [-1]}, "-2": {"layers": [-2]}, "-3": {"layers": [-3]},
                              "concat": {"layers": LAYERS}}
    with torch.no_grad():
        expected = torch.sigmoid(module(dm.val_x))
    for i, name in enumerate(module.names):
        probe = LinearProbe.load(run_dir, name)
        picks = [LAYERS.index(layer) for layer in probe.layers]
        torch.testing.assert_close(probe.p_a(dm.val_x[:, picks]), expected[:, i], atol=1e-5, rtol=1e-5)
    assert LinearProbe.load(run_dir / "probe.safetensors").name == meta["best"]


def test_story_split_has_no_overlap_and_depends_only_on_the_seed():
    g = torch.Generator().manual_seed(0)
    rows = [{"story_id": f"s{int(s)}", "label": i % 2} for i, s in enumerate(torch.randint(0, 37, (300,), generator=g))]
    train, val = split_by_story(rows, 0.25, seed=3)
    train_stories, val_stories = {rows[i]["story_id"] for i in train}, {rows[i]["story_id"] for i in val}
    assert not train_stories & val_stories
    assert sorted(train + val) == list(range(len(rows)))
    assert len(val_stories) == round(0.25 * len(train_stories | val_stories))
    backwards = list(reversed(rows))  # the same rows in another order: the same stories held out
    assert {backwards[i]["story_id"] for i in split_by_story(backwards, 0.25, seed=3)[1]} == val_stories
    assert split_by_story(rows, 0.25, seed=4) != (train, val)


def test_datamodule_split_has_no_story_on_both_sides(tmp_path):
    x, y, stories = planted(n=400, stories=60)
    dm = ActivationDataModule(activations=str(write_store(tmp_path / "s", x, y, stories)), layers=[-2, -1])
    dm.setup("fit")
    assert not {r["story_id"] for r in dm.train_rows} & {r["story_id"] for r in dm.val_rows}
    assert dm.layers == [-2, -1]
    rows = [int(r["row"]) for r in dm.train_rows]
    torch.testing.assert_close(dm.train_x[:, 0], x[rows][:, 1])  # layer -2 is the store's column 1


def test_errors_name_what_and_where(tmp_path):
    x, y, stories = planted(n=40, stories=10)
    empty = write_store(tmp_path / "empty", x[:0], [], [])
    with pytest.raises(ValueError, match=f"{empty}.*no rows"):
        ActivationDataModule(activations=str(empty)).setup("fit")
    store = write_store(tmp_path / "store", x, y, stories)
    with pytest.raises(ValueError, match=r"holds layers \[-1, -2, -3\].*\[-1, -8\].*\[-8\] not in it"):
        ActivationDataModule(activations=str(store), layers=[-1, -8]).setup("fit")
    one_story = write_store(tmp_path / "one", x, y, ["s0"] * len(y))
    with pytest.raises(ValueError, match=f"{one_story}.*1 story.*one side empty"):
        ActivationDataModule(activations=str(one_story)).setup("fit")
    with pytest.raises(ValueError, match="not both"):
        ActivationDataModule(activations=str(store), rounds=[str(tmp_path)])
    with pytest.raises(ValueError, match="val_fraction"):
        ActivationDataModule(activations=str(store), val_fraction=1.0)
    with pytest.raises(FileNotFoundError, match="header.json"):
        ActivationDataModule(activations=str(tmp_path / "nowhere")).setup("fit")


def test_evaluate_matches_hand_values():
    p = torch.tensor([0.9, 0.8, 0.3, 0.6])
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    m = evaluate(p, y)
    assert m["accuracy"] == pytest.approx(0.75) and m["auroc"] == pytest.approx(1.0)
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.09 + 0.36) / 4)
    assert evaluate(p, torch.ones(4))["auroc"] is None  # one class: undefined, not 0


def test_on_the_fly_rounds_through_the_cli_and_reused_on_rerun(tiny_model, tmp_path, monkeypatch):
    """The shipped config on the tiny model: rounds played and extracted under the root, probes
    trained, files written; a rerun loads no model (rounds and activations are reused)."""
    from debate_lightning.cli import cli_main

    root = tmp_path / "root"
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", "probe.yaml", f"--data.init_args.model={tiny_model}",
            f"--trainer.default_root_dir={root}", "--trainer.max_epochs=20", "--trainer.check_val_every_n_epoch=20",
            "--data.init_args.progress=false",
            "--trainer.enable_progress_bar=false", "--data.init_args.questions.limit=4"]
    cli_main(args)
    store = next((root / "probe_data").glob("activations-*"))
    header = json.loads((store / "header.json").read_text())
    assert header["layers"] == [-2, -1] and header["model"] == tiny_model  # layers: all = every decoder layer
    run_dir = root / "probe" / "version_0"
    meta = json.loads((run_dir / "probe.json").read_text())
    assert set(meta["probes"]) == {"-2", "-1", "concat"} and meta["best"] in meta["probes"]
    assert meta["data"]["train_rows"] + meta["data"]["val_rows"] == 4 * 2 * 2  # questions x side orders x orders
    assert "probe/concat/auroc" in (run_dir / "metrics.csv").read_text().splitlines()[0]

    # the same rounds given as `rounds`, one layer: extracted into a store of its own; no concat
    rounds_dir = next((root / "probe_data").glob("rounds-*"))
    cli_main([*args, f"--data.init_args.rounds={rounds_dir}", "--data.init_args.layers=[-1]"])
    one = json.loads((root / "probe" / "version_1" / "probe.json").read_text())
    assert one["probes"] == {"-1": {"layers": [-1]}} and one["best"] == "-1"
    assert len(list((root / "probe_data").glob("activations-*"))) == 2

    import debate_lightning.models.registry as registry

    def no_model(*a, **k):
        raise AssertionError("a rerun loaded a model instead of reusing probe_data/")

    monkeypatch.setattr(registry, "build_generator", no_model)
    monkeypatch.setattr("debate_lightning.tournament.runner.build_agents", no_model)
    cli_main(args)
    assert json.loads((root / "probe" / "version_2" / "probe.json").read_text())["val"] == meta["val"]


def test_fit_resumes_from_a_checkpoint(tmp_path):
    """The heads are shaped by the data in setup(), before Lightning restores a checkpoint."""
    x, y, stories = planted(n=200, stories=50)
    store = write_store(tmp_path / "store", x, y, stories)

    def trainer(epochs: int) -> L.Trainer:
        return L.Trainer(default_root_dir=tmp_path, max_epochs=epochs, logger=False, accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)

    first = trainer(3)
    first.fit(ProbeJudgeModule(), datamodule=ActivationDataModule(activations=str(store)))
    ckpt = first.checkpoint_callback.best_model_path
    resumed, module = trainer(6), ProbeJudgeModule()
    resumed.fit(module, datamodule=ActivationDataModule(activations=str(store)), ckpt_path=ckpt)
    assert resumed.global_step == 6 and module.sweep.weight.abs().sum() > 0
