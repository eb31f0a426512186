"""Training losses as pure functions: tensors in, tensors out, formula in the docstring.

Nothing here knows models, batches or Lightning; it imports only torch. Log-probabilities are
summed over completion tokens unless a docstring says otherwise. Tested against hand-computed
numbers in ``tests/training/test_losses.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "bon", "bon_ipo")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x·m) / sum(m) over ``dim`` (all elements when None); 0 where the mask is empty."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    preference: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    sft_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and the implicit rewards of chosen and rejected, each of shape [B].

    Inputs are log-probs summed over completion tokens. With log-ratios
    ``r_c = π_c − ref_c`` and ``r_r = π_r − ref_r`` and ``h = r_c − r_r``:

    - ``sigmoid`` (Rafailov et al. 2023, eq. 7; cDPO label smoothing ε, Mitchell 2023):
      ``−(1−ε)·log σ(βh) − ε·log σ(−βh)``. Same as TRL 1.16 ``loss_type="sigmoid"``.
    - ``ipo`` (Azar et al. 2023, eq. 17): ``(h − 1/(2β))²`` where each log-ratio is divided by
      its completion length (TRL's IPO averages log-probs over tokens the same way).
    - ``bon``: soft-label DPO with preference p = P(chosen ≻ rejected), on length-normalised
      log-ratios: ``−p·log σ(βh) − (1−p)·log σ(−βh) + sft_weight · NLL_c`` where
      ``NLL_c = −π_c / len_c`` is the chosen completion's mean token NLL under the policy.
    - ``bon_ipo``: ``(h − p/(2β))²`` on length-normalised log-ratios.

    Rewards are ``β·r_c`` and ``β·r_r`` with the same (normalised or not) log-ratios the loss
    uses; they are returned detached.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {DPO_LOSS_TYPES}")
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    normalise = loss_type != "sigmoid"
    if normalise:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(f"loss_type {loss_type!r} needs chosen_lengths and rejected_lengths")
        chosen_ratio = chosen_ratio / chosen_lengths.to(chosen_ratio.dtype).clamp(min=1)
        rejected_ratio = rejected_ratio / rejected_lengths.to(rejected_ratio.dtype).clamp(min=1)
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        p = torch.ones_like(h) if preference is None else preference.to(h.dtype)
        if loss_type == "bon":
            losses = -p * F.logsigmoid(beta * h) - (1 - p) * F.logsigmoid(-beta * h)
            if sft_weight:
                nll = -policy_chosen_logps / chosen_lengths.to(h.dtype).clamp(min=1)  # type: ignore[union-attr]
                losses = losses + sft_weight * nll
        else:  # bon_ipo
            losses = (h - p / (2 * beta)) ** 2
    return losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


def completion_nll(token_logps: torch.Tensor, mask: torch.Tensor, reduction: str = "token") -> torch.Tensor:
    """Negative log-likelihood of completion tokens only (prompt and padding have mask 0).

    ``token``: ``−Σ m·logp / Σ m`` (every completion token weighs the same);
    ``sequence``: mean over rows of ``−Σ_t m·logp / Σ_t m`` (every example weighs the same; this
    one is invariant to how a batch is split into gradient-accumulation micro-batches).
    """
    if reduction == "token":
        return -masked_mean(token_logps, mask)
    if reduction == "sequence":
        return -masked_mean(token_logps, mask, dim=-1).mean()
    raise ValueError(f"unknown reduction {reduction!r}; choose 'token' or 'sequence'")


# --- PPO / RL ---
# Shapes: [B, T] over response tokens, ``mask`` 1 on real response tokens (right padding).


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16); returns (advantages, returns).

    ``δ_t = r_t + γ·V_{t+1}·m_{t+1} − V_t`` and ``A_t = δ_t + γλ·m_{t+1}·A_{t+1}``, so nothing
    flows back across the end of a response; ``returns = A + V``. Both are 0 where mask is 0.
    Computed without gradient (targets, not a loss).
    """
    with torch.no_grad():
        mask = mask.to(values.dtype)
        rewards, values = rewards * mask, values * mask
        T = rewards.shape[-1]
        advantages = torch.zeros_like(rewards)
        last = torch.zeros_like(rewards[..., 0])
        for t in reversed(range(T)):
            next_mask = mask[..., t + 1] if t + 1 < T else torch.zeros_like(last)
            next_value = values[..., t + 1] if t + 1 < T else torch.zeros_like(last)
            delta = rewards[..., t] + gamma * next_value * next_mask - values[..., t]
            last = delta + gamma * lam * next_mask * last
            advantages[..., t] = last
        advantages = advantages * mask
        return advantages, (advantages + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x − μ) / sqrt(σ² + eps)`` with the masked mean μ and (unbiased) masked variance σ².

    With ``shift_mean=False`` the mean is added back: ``(x − μ)/σ + μ`` (scale only, as TRL does
    for rewards). Masked-out entries come back as 0.
    """
    m = mask.to(x.dtype)
    mean = masked_mean(x, m)
    n = m.sum()
    var = ((x - mean) ** 2 * m).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π (Schulman 2020, "Approximating KL").

    With ``d = logp − ref_logp``: ``k1 = d`` (unbiased, can be negative), ``k2 = d²/2``,
    ``k3 = exp(−d) − 1 + d`` (unbiased and ≥ 0).
    """
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {kind!r}; choose 'k1', 'k2' or 'k3'")


def ppo_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.

    ``ρ = exp(logp − old_logp)``; ``L = mean_m max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))``. Stats (detached):
    ``clipfrac`` (share of tokens where the clipped term is larger) and ``approx_kl``
    (``mean_m (ρ − 1) − log ρ``, the k3 estimate of KL(old ‖ new)).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(logp.dtype), mask),
            "approx_kl": masked_mean(ratio - 1 - log_ratio, mask),
        }
    return loss, stats


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, kind: str = "grpo", eps: float = 1e-4) -> torch.Tensor:
    """Advantages of ``rewards`` [N] relative to the other members of their group (``groups`` [N],
    any integer ids; e.g. one id per speech state, or per (state, side, turn) for role-conditioned
    self-play):

    - ``grpo`` (Shao et al. 2024): ``(r − mean_g) / (std_g + eps)``, std with Bessel's correction;
    - ``dr_grpo`` (Liu et al. 2025, "Dr. GRPO"): ``r − mean_g``, no division by the std;
    - ``rloo`` (Ahmadian et al. 2024): ``r − mean of the other members``, = ``n/(n−1)·(r − mean_g)``.

    A group whose rewards are all equal gets zero advantage; a group of one gets zero too (no baseline).
    """
    if kind not in ("grpo", "dr_grpo", "rloo"):
        raise ValueError(f"unknown advantage {kind!r}; choose 'grpo', 'dr_grpo' or 'rloo'")
    _, index = torch.unique(groups, return_inverse=True)
    k = int(index.max()) + 1 if index.numel() else 0
    r = rewards.float()
    count = torch.zeros(k, device=r.device).index_add_(0, index, torch.ones_like(r))
    mean = torch.zeros(k, device=r.device).index_add_(0, index, r) / count
    centred = r - mean[index]
    n = count[index]
    if kind == "rloo":
        return torch.where(n > 1, centred * n / (n - 1).clamp(min=1), torch.zeros_like(r))
    if kind == "dr_grpo":
        return torch.where(n > 1, centred, torch.zeros_like(r))
    var = torch.zeros(k, device=r.device).index_add_(0, index, centred**2) / (count - 1).clamp(min=1)
    return torch.where(n > 1, centred / (var.sqrt()[index] + eps), torch.zeros_like(r))


def grpo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None, beta: float = 0.0, clip_low: float = 0.2, clip_high: float | None = None,
    loss_type: str = "grpo", max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped token-level policy loss of GRPO-family trainers, as TRL defines its normalisations.

    Per token: ``ρ = exp(logp − old_logp)``, ``ℓ = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·k3``
    with ``A`` the sequence's advantage ([B] broadcast over its tokens) and ``k3`` the KL estimate to
    the reference (``kl_penalty(..., "k3")``; only with ``beta > 0``). Reduced by ``loss_type``:
    ``grpo``: each sequence's mean over its tokens, then the mean over sequences; ``dr_grpo``: the sum
    over all tokens / (B · ``max_completion_length``); ``dapo``: the sum over all tokens / their number.
    Stats (detached): ``kl``, ``clip_ratio/low_mean`` (tokens clipped below, A < 0),
    ``clip_ratio/high_mean`` (clipped above, A > 0), ``clip_ratio/region_mean`` (either).
    """
    if loss_type not in ("grpo", "dr_grpo", "dapo"):
        raise ValueError(f"unknown loss_type {loss_type!r}; choose 'grpo', 'dr_grpo' or 'dapo'")
    clip_high = clip_low if clip_high is None else clip_high
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    a = advantages.to(logp.dtype)[:, None].expand_as(logp)
    per_token = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * a)
    kl = None
    if beta > 0:
        if ref_logp is None:
            raise ValueError("grpo_loss: beta > 0 needs ref_logp")
        kl = kl_penalty(logp, ref_logp, "k3")
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    elif loss_type == "dr_grpo":
        length = max_completion_length if max_completion_length is not None else logp.shape[-1]
        loss = (per_token * m).sum() / (logp.shape[0] * length)
    else:
        loss = (per_token * m).sum() / m.sum().clamp(min=1)
    with torch.no_grad():
        low = (ratio < 1 - clip_low) & (a < 0)
        high = (ratio > 1 + clip_high) & (a > 0)
        stats = {"clip_ratio/low_mean": masked_mean(low.to(logp.dtype), m),
                 "clip_ratio/high_mean": masked_mean(high.to(logp.dtype), m),
                 "clip_ratio/region_mean": masked_mean((low | high).to(logp.dtype), m)}
        if kl is not None:
            stats["kl"] = masked_mean(kl, m)
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (as in OpenAI baselines / TRL PPO).

    ``V_clip = V_old + clip(V − V_old, −ε, ε)``; ``L = ½·mean_m max((V − R)², (V_clip − R)²)``.
    Stats (detached): ``vf_clipfrac``, the share of tokens where the clipped error is larger.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    err, err_clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((err_clipped > err).to(values.dtype), mask)}
    return loss, stats


def probe_loss(logits: torch.Tensor, labels: torch.Tensor, sq_norms: torch.Tensor,
               weight_decay: float) -> torch.Tensor:
    """Per-probe ridge-logistic objective, shape [P].

    L_p = mean_n BCE(sigmoid(logits[n, p]), labels[n]) + weight_decay / 2 · sq_norms[p]

    ``logits`` [N, P], ``labels`` [N] in {0, 1}, ``sq_norms`` [P] = ||w_p||² (biases excluded).
    """
    targets = labels.to(logits.dtype).unsqueeze(1).expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(0)
    return bce + 0.5 * weight_decay * sq_norms
