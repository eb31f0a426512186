"""`curves`: a run's per-epoch metrics read back from the CSVLogger's metrics.csv."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch

from debate_lightning.__main__ import main
from debate_lightning.training.curves import epoch_curves


class _Logging(pl.LightningModule):
    """Logs like an online run: per-step losses, an `at_start` evaluation, per-epoch evaluations."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def on_fit_start(self):
        self.logger.log_metrics({"tournament/win_rate": 0.5, "tournament/rounds": 8.0}, step=0)

    def training_step(self, batch, batch_idx):
        loss = (self.w - 1).pow(2).sum()
        self.log("loss", loss)
        return loss

    def on_train_epoch_end(self):
        self.log("tournament/win_rate", 0.25 * (self.current_epoch + 2), on_epoch=True)
        if self.current_epoch == 1:
            self.log("judge/accuracy", 0.75, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture
def run(tmp_path):
    logger = pl.loggers.CSVLogger(tmp_path, name="run")
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=3, logger=logger, log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_Logging(), torch.utils.data.DataLoader(torch.zeros(3, 1)))
    return trainer.log_dir


def test_one_row_per_epoch_with_the_start_first(run):
    metrics, table = epoch_curves(run)
    assert metrics == ["judge/accuracy", "tournament/win_rate"]  # counts like tournament/rounds left out
    assert [r["epoch"] for r in table] == ["start", "0", "1"]
    assert [r["tournament/win_rate"] for r in table] == [0.5, 0.5, 0.75]
    assert math.isnan(table[1]["judge/accuracy"]) and table[2]["judge/accuracy"] == 0.75


def test_cli_prints_the_table_and_plots(run, tmp_path, capsys):
    assert main(["curves", run, "--metrics", "tournament/win_rate", "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["epoch", "tournament/win_rate"]
    assert [line.split() for line in out[1:4]] == [["start", "0.500"], ["0", "0.500"], ["1", "0.750"]]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs_name_what_and_where(run, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["curves", str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "no metrics.csv at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["curves", run, "--metrics", "tournament/win_rat"])
    err = capsys.readouterr().err
    assert "no column tournament/win_rat" in err and "tournament/win_rate" in err
