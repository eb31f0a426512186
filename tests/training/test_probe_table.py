"""Probes across formats: train on one format, validate on another (``val_formats``), and the
``probe-table`` command that puts runs on one store into one table of held-out AUROC."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from debate_lightning.__main__ import main
from debate_lightning.training.activation_data import ActivationDataModule
from debate_lightning.training.probe import ProbeJudgeModule, evaluate
from debate_lightning.training.probe_table import build_table, render_markdown
from probe_files import write_store

HIDDEN = 16
FORMATS = ("debate", "consultancy0", "consultancy1", "empty")


def three_formats(stories: int = 400, strength: float = 4.0, seed: int = 0):
    """Every story in every format (two rows each); only debate rows carry the label, along one
    direction of layer -2 (store column 1). Consultancy and empty rows are noise."""
    g = torch.Generator().manual_seed(seed)
    names = [f for _ in range(stories) for f in FORMATS for _ in range(2)]
    story_ids = [f"s{i}" for i in range(stories) for _ in FORMATS for _ in range(2)]
    n = len(names)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 3, HIDDEN, generator=g) * 2.0 + 3.0
    direction = torch.randn(HIDDEN, generator=g)
    debate = torch.tensor([f == "debate" for f in names])
    x[debate, 1] += strength * (2 * y[debate, None].float() - 1) * direction / direction.norm()
    return x, y.tolist(), story_ids, names


def fit(store: Path, root: Path, formats: list[str] | None, val_formats: list[str] | None = None) -> Path:
    L.seed_everything(0)
    dm = ActivationDataModule(activations=str(store), formats=formats, val_formats=val_formats, batch_size=4096)
    trainer = L.Trainer(default_root_dir=root, max_epochs=40, logger=False, accelerator="cpu", devices=1,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        check_val_every_n_epoch=40, num_sanity_val_steps=0)
    module = ProbeJudgeModule(lr=0.05, weight_decay=0.01)
    trainer.fit(module, datamodule=dm)
    return root  # the probe files are written into default_root_dir when there is no logger


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("formats")
    x, y, stories, names = three_formats()
    store = write_store(tmp / "store", x, y, stories, formats=names)
    return store, {f: fit(store, tmp / f"train_{f}", [f]) for f in ("debate", "consultancy", "empty")}


def test_val_formats_validate_on_other_formats_of_held_out_stories(tmp_path):
    x, y, stories, names = three_formats(stories=40)
    store = str(write_store(tmp_path / "store", x, y, stories, formats=names))
    transfer = ActivationDataModule(activations=store, formats=["debate"], val_formats=["consultancy"])
    transfer.setup("fit")
    assert {r["format_name"] for r in transfer.train_rows} == {"debate"}
    assert {r["format_name"] for r in transfer.val_rows} == {"consultancy0", "consultancy1"}
    assert not {r["story_id"] for r in transfer.train_rows} & {r["story_id"] for r in transfer.val_rows}
    # the held-out stories do not depend on the formats asked for
    everything = ActivationDataModule(activations=store)
    everything.setup("fit")
    assert {r["story_id"] for r in transfer.val_rows} == {r["story_id"] for r in everything.val_rows}
    summary = transfer.summary()
    assert summary["train_formats"] == ["debate"] and summary["val_formats"] == ["consultancy0", "consultancy1"]
    assert summary["train_story_ids"] == sorted({r["story_id"] for r in transfer.train_rows})
    with pytest.raises(ValueError, match=r"no validation rows of formats \['open_debate'\].*data.val_formats"):
        ActivationDataModule(activations=store, val_formats=["open_debate"]).setup("fit")


def test_planted_format_is_read_in_format_and_not_across(runs):
    store, dirs = runs
    table = build_table([dirs["empty"], dirs["consultancy"], dirs["debate"]])
    assert table["columns"] == ["debate", "consultancy", "empty"]
    # rows in the columns' order, whatever order the runs came in: the diagonal is in-format
    assert [row["train_formats"] for row in table["rows"]] == [["debate"], ["consultancy"], ["empty"]]
    by_train = {row["train_formats"][0]: row["cells"] for row in table["rows"]}
    assert by_train["debate"]["debate"]["auroc"] >= 0.9  # the signal, held-out stories
    assert abs(by_train["debate"]["consultancy"]["auroc"] - 0.5) <= 0.1  # nothing to transfer to
    assert abs(by_train["debate"]["empty"]["auroc"] - 0.5) <= 0.1
    assert abs(by_train["consultancy"]["consultancy"]["auroc"] - 0.5) <= 0.1  # trained on noise

    # every cell is on the same rows: stories no run trained on, all of them in the store
    rows = [json.loads(line) for line in (store / "index.jsonl").read_text().splitlines()]
    trained = set()
    for d in dirs.values():
        trained |= set(json.loads((d / "probe.json").read_text())["data"]["train_story_ids"])
    held = [r for r in rows if r["story_id"] not in trained]
    assert table["held_out"]["rows"] == len(held) > 0
    for column in table["columns"]:
        n = sum(r["format"] == column for r in held)
        assert table["held_out"]["rows_by_column"][column] == n
        assert all(row["cells"][column]["n"] == n for row in table["rows"])
        judged = [r for r in held if r["format"] == column]
        expected = evaluate(torch.tensor([r["judge_p_a"] for r in judged]), torch.tensor([float(r["label"]) for r in judged]))
        assert table["llm_judge"][column]["auroc"] == pytest.approx(expected["auroc"])

    text = render_markdown(table)
    assert "| trained on \\ validated on | debate | consultancy | empty |" in text
    assert f"| debate, probe {table['rows'][0]['probe']} | {by_train['debate']['debate']['auroc']:.3f} |" in text


def test_columns_by_name_split_consultancy_sides(runs):
    store, dirs = runs
    table = build_table([dirs["debate"]], activations=store, by="name", probe="-2")
    assert table["columns"] == ["debate", "consultancy0", "consultancy1", "empty"]
    assert table["rows"][0]["probe"] == "-2" and table["rows"][0]["layers"] == [-2]


def test_command_writes_markdown_and_json(runs, tmp_path, capsys):
    _, dirs = runs
    out = tmp_path / "table.md"
    assert main(["probe-table", str(dirs["debate"]), str(dirs["empty"]), "--output", str(out)]) == 0
    assert out.read_text() in capsys.readouterr().out
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [r["train_formats"] for r in saved["rows"]] == [["debate"], ["empty"]]


def test_bad_inputs_are_named(runs, tmp_path, capsys):
    store, dirs = runs
    assert main(["probe-table", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such probe run directory" in capsys.readouterr().err
    (tmp_path / "empty_dir").mkdir()
    assert main(["probe-table", str(tmp_path / "empty_dir")]) == 2
    assert "no probe.json in it or below" in capsys.readouterr().err

    old = tmp_path / "old"
    old.mkdir()
    for name in ("probe.safetensors", "probe.json"):
        (old / name).write_bytes((dirs["debate"] / name).read_bytes())
    meta = json.loads((old / "probe.json").read_text())
    del meta["data"]["train_story_ids"]
    (old / "probe.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{old / 'probe.json'} records no train stories"):
        build_table([old])

    other = write_store(tmp_path / "other", torch.zeros(4, 3, HIDDEN), [0, 1, 0, 1], ["t0", "t0", "t1", "t1"])
    meta = json.loads((dirs["empty"] / "probe.json").read_text())
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "probe.safetensors").write_bytes((dirs["empty"] / "probe.safetensors").read_bytes())
    meta["data"]["store"] = str(other)
    (moved / "probe.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="different activation stores.*--activations"):
        build_table([dirs["debate"], moved])
    wide = write_store(tmp_path / "wide", torch.zeros(4, 3, 2 * HIDDEN), [0, 1, 0, 1], ["t0", "t0", "t1", "t1"])
    with pytest.raises(ValueError, match=f"activation store {wide} cannot be read.*hidden_size"):
        build_table([dirs["debate"]], activations=wide)
    with pytest.raises(ValueError, match="nothing is held out"):
        build_table([dirs["debate"]], activations=write_store(
            tmp_path / "seen", torch.zeros(2, 3, HIDDEN), [0, 1], [meta["data"]["train_story_ids"][0]] * 2))


def test_the_documented_sequence_on_the_tiny_model(tiny_model, tmp_path, monkeypatch):
    """docs/probes.md's four commands, as typed there, on the tiny model and 8 questions."""
    monkeypatch.chdir(tmp_path)
    rounds, store = tmp_path / "rounds", tmp_path / "activations"
    assert main(["tournament", "--config", "tournament_probe_formats.yaml", "--models.embedded.path", tiny_model,
                 "--data.limit", "8", "--output", str(rounds), "--progress", "false", "--report", "false"]) == 0
    assert main(["activations", "--rounds", str(rounds), "--model", tiny_model, "--layers", "-1", "-2",
                 "--output", str(store), "--progress", "false"]) == 0
    for f in ("debate", "consultancy", "empty"):
        assert main(["fit", "--config", "probe.yaml", "--data.init_args.activations", str(store),
                     "--data.init_args.formats", f"[{f}]", "--data.init_args.val_formats", "[debate, consultancy, empty]",
                     "--trainer.default_root_dir", str(tmp_path / f"train_{f}"), "--trainer.max_epochs", "10",
                     "--trainer.check_val_every_n_epoch", "10", "--trainer.enable_progress_bar", "false"]) == 0
    out = tmp_path / "table.md"
    assert main(["probe-table", *(str(tmp_path / f"train_{f}") for f in ("empty", "debate", "consultancy")),
                 "--output", str(out)]) == 0
    table = json.loads(out.with_suffix(".json").read_text())
    assert table["columns"] == ["debate", "consultancy", "empty"]
    assert [r["train_formats"] for r in table["rows"]] == [["debate"], ["consultancy"], ["empty"]]
    held = table["held_out"]["rows_by_column"]
    assert held["consultancy"] == 2 * held["debate"] == 2 * held["empty"] > 0  # two consultancy sides
    meta = json.loads(next((tmp_path / "train_debate").rglob("probe.json")).read_text())
    assert meta["data"]["train_formats"] == ["debate"]
    assert meta["data"]["val_formats"] == ["consultancy0", "consultancy1", "debate", "empty"]
