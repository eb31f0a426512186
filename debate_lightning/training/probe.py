"""``ProbeJudgeModule``: logistic probes on a judge's activations, one per layer, in one pass.

Does a judge's *activations* know which answer is correct better than its *words*? The
``ActivationDataModule`` gives the judge model's hidden states at the verdict position (the
position where the judge would write "A" or "B"), labelled 1 when answer A is correct. This module
trains, in the same optimizer steps, one logistic probe per requested layer (a layer sweep) and,
with ``concat``, one over all those layers concatenated (the original research code's probe):

    P(A correct) = sigmoid(w · z + b),   z = (x - mean) / std   (mean, std: train rows only)

Objective per probe (ridge logistic regression, ``probe_loss``):

    L_p = mean_n BCE(sigmoid(w_p · z_n + b_p), y_n) + weight_decay / 2 · ||w_p||²

summed over probes, whose parameters are disjoint, so each probe trains exactly as if alone. The
weight decay is this L2 term in the loss (biases excluded), not AdamW's decoupled decay, so the
optimum does not depend on the learning rate or on how long the optimizer runs; Adam, its rate
decayed to 0 by a cosine, reaches that optimum.

Validation logs, per probe NAME (a layer index such as ``-1``, or ``concat``), through
torchmetrics: ``probe/NAME/accuracy``, ``probe/NAME/auroc``, ``probe/NAME/ece`` (10-bin expected
calibration error) and ``probe/NAME/brier`` (mean squared error of P(A)). At the end of fit,
beside the run's logs (``trainer.log_dir``): ``probe.safetensors`` and ``probe.json`` (the files
``models/probe.py`` loads to judge rounds) and ``probe_report.md`` with ``probe_auroc.png``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanSquaredError, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryCalibrationError

from debate_lightning.models.probe import FORMAT_VERSION, META_FILE, PROBE_FILE
from debate_lightning.training.losses import probe_loss

REPORT_FILE = "probe_report.md"
PLOT_FILE = "probe_auroc.png"
METRICS = ("accuracy", "auroc", "ece", "brier")
CONCAT = "concat"
# Probe files record the store header's description of the model, so a probe judge can refuse
# another model (models/probe.py checks model, hidden_size, num_layers, adapter, prompt_sets).
HEADER_KEYS = ("model", "model_name", "adapter", "hidden_size", "num_layers", "prompt_sets", "dtype")


class LayerSweep(nn.Module):
    """Logistic heads over standardised activations [N, L, H]: one per layer, plus (``concat``)
    one over the L layers concatenated; ``forward`` gives logits [N, P], P = L (+1)."""

    def __init__(self, num_layers: int, hidden_size: int, concat: bool):
        super().__init__()
        # Zeros: the objective is convex, so the start only has to be deterministic.
        self.weight = nn.Parameter(torch.zeros(num_layers, hidden_size))
        self.bias = nn.Parameter(torch.zeros(num_layers))
        self.concat = concat
        if concat:
            self.concat_weight = nn.Parameter(torch.zeros(num_layers, hidden_size))
            self.concat_bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("mean", torch.zeros(num_layers, hidden_size))
        self.register_buffer("std", torch.ones(num_layers, hidden_size))

    @torch.no_grad()
    def fit_standardisation(self, x: torch.Tensor) -> None:
        """Mean and standard deviation per feature of the train rows ``x`` [N, L, H]. A constant
        feature (std ~ 0, e.g. the embedding of the fixed last token) gets std 1: it standardises
        to 0 and its weight only feels the weight decay."""
        x = x.double()
        std = x.std(0, unbiased=False)
        self.mean.copy_(x.mean(0))
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.to(self.mean.dtype) - self.mean) / self.std
        logits = torch.einsum("nlh,lh->nl", z, self.weight) + self.bias
        if self.concat:
            concat = torch.einsum("nlh,lh->n", z, self.concat_weight) + self.concat_bias
            logits = torch.cat([logits, concat[:, None]], 1)
        return logits

    def sq_norms(self) -> torch.Tensor:
        norms = self.weight.pow(2).sum(1)
        return torch.cat([norms, self.concat_weight.pow(2).sum()[None]]) if self.concat else norms

    def export(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The probe-file tensors (``NAME.weight/bias/mean/std``, see ``models/probe.py``)."""
        out: dict[str, torch.Tensor] = {}
        heads = [(self.weight[i], self.bias[i], self.mean[i], self.std[i]) for i in range(self.weight.shape[0])]
        if self.concat:
            heads.append((self.concat_weight.flatten(), self.concat_bias, self.mean.flatten(), self.std.flatten()))
        for name, (w, b, m, s) in zip(names, heads):
            for part, t in (("weight", w), ("bias", b), ("mean", m), ("std", s)):
                out[f"{name}.{part}"] = t.detach().to("cpu", torch.float32).clone()  # own storage each
        return out


def metric_collection(ece_bins: int = 10) -> MetricCollection:
    """Accuracy (threshold 0.5), AUROC, ECE and Brier of P(A) against "A is correct"."""
    return MetricCollection({"accuracy": BinaryAccuracy(), "auroc": BinaryAUROC(),
                             "ece": BinaryCalibrationError(n_bins=ece_bins), "brier": MeanSquaredError()})


def evaluate(p_a: torch.Tensor, labels: torch.Tensor, ece_bins: int = 10) -> dict[str, float | None]:
    """The four metrics of P(A) ``p_a`` [N]; AUROC is None when ``labels`` hold one class only
    (it is undefined), every metric None when there are no rows."""
    if p_a.numel() == 0:
        return dict.fromkeys(METRICS)
    metrics = metric_collection(ece_bins)
    metrics.update(p_a.float(), labels.float())
    one_class = bool(labels.min() == labels.max())
    with warnings.catch_warnings():
        if one_class:  # torchmetrics warns and reports AUROC 0; we report None instead
            warnings.filterwarnings("ignore", message="No (positive|negative) samples in targets")
        out: dict[str, float | None] = {k: float(v) for k, v in metrics.compute().items()}
    if one_class:
        out["auroc"] = None
    return out


def best_probe(val: dict[str, dict[str, float | None]]) -> str:
    """The probe with the highest validation AUROC (ties and undefined AUROCs: the lower Brier)."""
    def key(name: str) -> tuple[float, float]:
        auroc, brier = val[name].get("auroc"), val[name].get("brier")
        return (auroc if auroc is not None else -1.0, -(brier if brier is not None else math.inf))

    return max(val, key=key)


class ProbeJudgeModule(L.LightningModule):
    """Linear-probe judges: a layer sweep of logistic probes trained on ``ActivationDataModule``.

    Args:
        concat: also train one probe over all the layers concatenated (named ``concat``; with a
            single layer it would repeat that layer's probe, so it is left out then).
        lr: Adam's peak learning rate, decayed to 0 by a cosine over the run (each probe is a
            convex problem: a few hundred full-batch steps reach its optimum).
        weight_decay: lambda of the L2 penalty lambda/2 · ||w||² added to each probe's mean BCE
            (weights only, not biases). It is in the loss, not AdamW's decoupled decay, so the
            result is a ridge logistic regression independent of ``lr``. The default (1.0) suits
            the few dozen rows of the on-the-fly data, where hundreds of features would otherwise
            give overconfident probes; for thousands of rows 0.01-0.1 fits more signal.
        ece_bins: equal-width bins of the expected calibration error.
    """

    def __init__(self, concat: bool = True, lr: float = 0.01, weight_decay: float = 1.0, ece_bins: int = 10):
        super().__init__()
        if lr <= 0 or weight_decay < 0 or ece_bins < 1:
            raise ValueError(f"model: lr must be > 0, weight_decay >= 0 and ece_bins >= 1 "
                             f"(got {lr}, {weight_decay}, {ece_bins})")
        self.save_hyperparameters()
        self.concat, self.lr, self.weight_decay, self.ece_bins = concat, lr, weight_decay, ece_bins
        self.sweep: LayerSweep | None = None
        self.names: list[str] = []
        self.probe_layers: dict[str, list[int]] = {}
        self.val_metrics = nn.ModuleList()

    # -- wiring -----------------------------------------------------------------------------------
    def _data(self) -> Any:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "train_x") or dm.train_x is None:
            raise ValueError("ProbeJudgeModule trains on an ActivationDataModule (data.class_path: debate_lightning"
                             f".training.activation_data.ActivationDataModule); got {type(dm).__name__}")
        return dm

    def build(self, layers: list[int], hidden_size: int, train_x: torch.Tensor) -> None:
        """Make the heads for ``layers`` and fit the standardisation on ``train_x`` [N, L, H]."""
        concat = self.concat and len(layers) > 1
        self.sweep = LayerSweep(len(layers), hidden_size, concat)
        self.sweep.fit_standardisation(train_x)
        self.names = [str(layer) for layer in layers] + ([CONCAT] if concat else [])
        self.probe_layers = {name: [layer] for name, layer in zip(self.names, layers)}
        if concat:
            self.probe_layers[CONCAT] = list(layers)
        self.val_metrics = nn.ModuleList(metric_collection(self.ece_bins) for _ in self.names)

    def setup(self, stage: str) -> None:
        if self.sweep is None:  # heads are shaped by the data, so they are made once it is loaded
            dm = self._data()
            self.build(dm.layers, int(dm.train_x.shape[-1]), dm.train_x)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        """Logits [N, P] of every probe (order: ``self.names``) for activations [N, L, H]."""
        assert self.sweep is not None, "call setup() (or build()) first"
        return self.sweep(activations)

    def configure_optimizers(self) -> dict[str, Any]:
        # Full-batch Adam at a constant rate keeps oscillating around the optimum of the wide
        # concat probe; decaying the rate to 0 over the run lands on it (within ~1e-5 in loss of
        # an L-BFGS solution on the shipped data).
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        total = float(self.trainer.estimated_stepping_batches)
        decay = ((lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)))
                 if math.isfinite(total) and total > 0 else (lambda step: 1.0))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, decay), "interval": "step"}}

    # -- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        per_probe = probe_loss(self(x), y, self.sweep.sq_norms(), self.weight_decay)
        self.log("train/loss", per_probe.mean(), on_step=True, batch_size=len(y))
        return per_probe.sum()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        bce = F.binary_cross_entropy_with_logits(logits, y[:, None].to(logits.dtype).expand_as(logits))
        self.log("val/loss", bce, on_epoch=True, sync_dist=True, batch_size=len(y))  # mean over probes, no penalty
        for i, metrics in enumerate(self.val_metrics):
            metrics.update(torch.sigmoid(logits[:, i]), y)

    def on_validation_epoch_end(self) -> None:
        for name, metrics in zip(self.names, self.val_metrics):
            for key, value in metrics.compute().items():
                self.log(f"probe/{name}/{key}", value, sync_dist=False)  # already reduced across ranks
            metrics.reset()

    # -- the probe files --------------------------------------------------------------------------
    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.write_probe(Path(self.trainer.log_dir or self.trainer.default_root_dir))

    @torch.no_grad()
    def write_probe(self, directory: Path, dm: Any = None) -> dict[str, Any]:
        """Write probe.safetensors, probe.json, probe_report.md and the AUROC plot into
        ``directory`` from the current weights and the validation rows; return probe.json."""
        from safetensors.torch import save_file

        dm = dm if dm is not None else self._data()
        directory.mkdir(parents=True, exist_ok=True)
        p_a = torch.sigmoid(self(dm.val_x.to(self.device))).cpu()
        val = {name: evaluate(p_a[:, i], dm.val_y, self.ece_bins) for i, name in enumerate(self.names)}
        best = best_probe(val)
        meta = {key: dm.header.get(key) for key in HEADER_KEYS}
        meta.update({
            "layers": list(dm.layers), "probes": {name: {"layers": self.probe_layers[name]} for name in self.names},
            "best": best, "val": val, "format_version": FORMAT_VERSION,
            "standardisation": "per feature, mean and std of the train rows (std 1 where a feature is constant)",
            "data": dm.summary(),
            "training": {"lr": self.lr, "weight_decay": self.weight_decay, "steps": int(self.global_step)},
        })
        save_file(self.sweep.export(self.names), str(directory / PROBE_FILE))
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        judge = _llm_judge_metrics(dm.val_rows, self.ece_bins)
        _plot(directory / PLOT_FILE, meta, judge)
        (directory / REPORT_FILE).write_text(_report(meta, judge))
        return meta


def _llm_judge_metrics(rows: list[dict[str, Any]], ece_bins: int) -> dict[str, Any] | None:
    """The LLM judge's own P(A) (from its A/B log-probs, stored with each row) on the validation
    rows that have one: the baseline a probe is compared with."""
    pairs = [(float(r["judge_p_a"]), float(r["label"])) for r in rows if r.get("judge_p_a") is not None]
    if not pairs:
        return None
    p, y = torch.tensor(pairs).T
    return {**evaluate(p, y, ece_bins), "rows": len(pairs)}


def _fmt(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"


def _report(meta: dict[str, Any], judge: dict[str, Any] | None) -> str:
    data, best = meta["data"], meta["best"]
    lines = [
        "# Probe judges", "",
        f"Logistic probes on the activations of **{meta['model_name']}** (`{meta['model']}`) at the verdict position "
        f"of judge chats (prompt sets: {', '.join(meta['prompt_sets'] or ['?'])}; trained on "
        f"{', '.join(data['train_formats'])} rounds, validated on {', '.join(data['val_formats'])}). Label: answer A is correct. Standardised with train statistics; "
        f"train/validation split by story (seed {data['seed']}): {data['train_rows']} train rows from "
        f"{data['train_stories']} stories, {data['val_rows']} validation rows from {data['val_stories']} stories.", "",
        f"Best probe by validation AUROC: **{best}** (layers {meta['probes'][best]['layers']}).", "",
        "| probe | layers | val accuracy | AUROC | ECE | Brier | n train | n val |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, spec in meta["probes"].items():
        m = meta["val"][name]
        layers = spec["layers"] if len(spec["layers"]) <= 4 else f"{len(spec['layers'])} layers"
        mark = " **(best)**" if name == best else ""
        lines.append(f"| {name}{mark} | {layers} | {_fmt(m['accuracy'])} | {_fmt(m['auroc'])} | {_fmt(m['ece'])} | "
                     f"{_fmt(m['brier'])} | {data['train_rows']} | {data['val_rows']} |")
    if judge is not None:
        lines.append(f"| LLM judge (A/B log-probs) | – | {_fmt(judge['accuracy'])} | {_fmt(judge['auroc'])} | "
                     f"{_fmt(judge['ece'])} | {_fmt(judge['brier'])} | – | {judge['rows']} |")
    lines += [
        "", f"![validation AUROC by layer]({PLOT_FILE})", "",
        "How to read it: AUROC is the chance that a row where A is correct gets a higher P(A) than one where B "
        "is (0.5 = no signal, 1 = perfect ranking); accuracy thresholds P(A) at 0.5; ECE (lower is better) is the "
        "gap between confidence and accuracy over 10 bins; Brier is the mean squared error of P(A). A probe "
        "above the LLM judge's row means the judge's activations hold more about the answer than its A/B "
        "log-probs express. Validation stories are never seen in training; with few validation rows, "
        "differences of a few hundredths are noise.", "",
    ]
    return "\n".join(lines)


def _plot(path: Path, meta: dict[str, Any], judge: dict[str, Any] | None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure with its own Agg canvas: no global pyplot state, no display needed.
    fig = Figure(figsize=(7, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    layered = [(int(n), meta["val"][n]["auroc"]) for n in meta["probes"] if n != CONCAT]
    xs = [x for x, _ in layered]
    ax.plot(xs, [float("nan") if a is None else a for _, a in layered], "o-", label="probe on one layer")
    if CONCAT in meta["val"] and meta["val"][CONCAT]["auroc"] is not None:
        ax.axhline(meta["val"][CONCAT]["auroc"], color="tab:green", ls="--", label="probe on layers concatenated")
    if judge is not None and judge["auroc"] is not None:
        ax.axhline(judge["auroc"], color="tab:red", ls=":", label="LLM judge (A/B log-probs)")
    ax.axhline(0.5, color="grey", lw=1, label="chance")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer (hidden-state index, -1 = last)")
    ax.set_ylabel("validation AUROC")
    ax.set_title(f"Probe AUROC by layer: {meta['model_name']}, {meta['data']['val_rows']} validation rows")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
