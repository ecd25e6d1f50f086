"""TBPS-CLIP losses (spec §6) as pure functions of tensors and explicit numbers.

Conventions shared by every function:

* ``*_local``: this process's b rows; ``*_all``: the B gathered rows (all processes, rank order), as
  returned by :func:`tbps.distributed.gather_with_grad` (or the baseline gather). With one process
  local and gathered are the same tensor. The local rows of process ``rank`` sit at gathered
  indices ``g(i) = rank * b + i``.
* Image/text features and SimCLR embeddings must already be L2-normalised (the functions do not
  normalise: the model owns that step).
* ``scale`` is the logit scale s as a 0-d tensor, already clamped: build it with
  :func:`clamped_logit_scale` so that θ keeps its gradient above the clamp.
* Row-averaged losses divide by the local b. Under DDP this gives the exact single-device gradient
  (see :mod:`tbps.distributed`).

The overall weights (R-ITC 1, SS-I 0.4, C-ITC 0.1, MVS averaging; SS-T when studied) are applied by
:func:`combine_losses`, never inside the individual terms. No setting has a default here: every
number comes from the experiment's ``LossConfig`` (:mod:`tbps.config`, where the recipe's values
live), passed by :func:`tbps.objective.step_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MVS_MODES = ("average", "add")


def _at_least_fp32(x: Tensor) -> Tensor:
    """Half-precision (AMP) logits are promoted for the softmax; float64 stays float64 (tests)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def clamped_logit_scale(theta: Tensor, max_scale: float = 100.0) -> Tensor:
    """s = min(exp θ, max_scale) in value; dL/dθ = s·∂L/∂s at every θ (spec §5.3).

    This is what the official implementation's in-place clamp of ``exp(θ).data`` does: the exp
    backward multiplies by its (clamped) output, so θ is never clipped and keeps a gradient above
    the clamp. ``torch.clamp`` would cut θ's gradient to 0 there instead.
    """
    value = theta.detach().exp().clamp(max=max_scale)
    return value * torch.exp(theta - theta.detach())


def identity_targets(local_ids: Tensor, gathered_ids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """q̂_ij = 1[y_i = y_j] / Σ_k 1[y_i = y_k]  (b x B), i local, j and k over the gathered batch.

    Every local sample appears in the gathered batch, so each denominator is at least 1; a
    local id missing from ``gathered_ids`` is a caller bug and raises.
    """
    same = (local_ids.reshape(-1, 1) == gathered_ids.reshape(1, -1)).to(dtype)
    counts = same.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise ValueError(
            "a local id does not occur in the gathered ids: local rows must be part of the gathered batch"
        )
    return same / counts


def diagonal_targets(
    local_rows: int, gathered_rows: int, rank: int, device: torch.device | None = None
) -> Tensor:
    """Plain CLIP one-hot targets: row i is 1 at its own gathered index g(i) = rank·b + i."""
    start = rank * local_rows
    if start + local_rows > gathered_rows:
        raise ValueError(
            f"rank {rank} x {local_rows} local rows does not fit in {gathered_rows} gathered rows"
        )
    targets = torch.zeros(local_rows, gathered_rows, device=device)
    targets[torch.arange(local_rows, device=device), start + torch.arange(local_rows, device=device)] = 1.0
    return targets


def soft_targets(hard: Tensor, logits_nograd: Tensor, alpha: float) -> Tensor:
    """m = α·softmax_j(logits′) + (1−α)·q̂, computed without gradient.

    ``logits_nograd`` are s·v′_i·t′_j (i2t) or s·t′_i·v′_j (t2i) from the no-grad second pass.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"soft-label alpha must lie in [0, 1], got {alpha}")
    with torch.no_grad():
        model_dist = _at_least_fp32(logits_nograd.detach()).softmax(dim=1)
        return alpha * model_dist + (1.0 - alpha) * hard.to(model_dist.dtype)


def soft_label_alpha(
    step_in_epoch: int, steps_per_epoch: int, epoch: int, *, alpha: float, ramp_epochs: int
) -> float:
    """α for this iteration: α·min(1, n/(ramp_epochs·E)) during the ramp, α afterwards.

    ``epoch`` is 0-based and n counts iterations since the start of training, so with the default
    one-epoch ramp α = α·n/E for n = 0..E−1 in the first epoch (it never quite reaches α there,
    as in the official code) and α from the second epoch on. ``ramp_epochs=0`` disables the ramp.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    if ramp_epochs <= 0 or epoch >= ramp_epochs:
        return float(alpha)
    n = epoch * steps_per_epoch + step_in_epoch
    return float(alpha) * min(1.0, n / (ramp_epochs * steps_per_epoch))


def _similarity_logits(
    img_local: Tensor, txt_local: Tensor, img_all: Tensor, txt_all: Tensor, scale: Tensor
) -> tuple[Tensor, Tensor]:
    """(s·v_i·t_j, s·t_i·v_j): image→text and text→image logits, local rows x gathered columns."""
    return scale * img_local @ txt_all.t(), scale * txt_local @ img_all.t()


def _soft_cross_entropy(targets: Tensor, logits: Tensor) -> Tensor:
    """−(1/b)·Σ_i Σ_j m_ij·log softmax_j(logits)_ij, the targets treated as constants."""
    log_p = _at_least_fp32(logits).log_softmax(dim=1)
    return -(targets.detach().to(log_p.dtype) * log_p).sum(dim=1).mean()


def n_itc(
    img_local: Tensor,
    txt_local: Tensor,
    img_all: Tensor,
    txt_all: Tensor,
    scale: Tensor,
    *,
    targets_i2t: Tensor,
    targets_t2i: Tensor,
) -> Tensor:
    """N-ITC = ½[CE(m^{i2t}, p^{i2t}) + CE(m^{t2i}, p^{t2i})], averaged over the local rows.

    The targets m are b x B and treated as constants: the hard identity targets q̂ of
    :func:`identity_targets` for the paper's formula, :func:`soft_targets` for the official
    recipe, :func:`diagonal_targets` for plain CLIP.
    """
    logits_i2t, logits_t2i = _similarity_logits(img_local, txt_local, img_all, txt_all, scale)
    return 0.5 * (_soft_cross_entropy(targets_i2t, logits_i2t) + _soft_cross_entropy(targets_t2i, logits_t2i))


def clip_loss(
    img_local: Tensor, txt_local: Tensor, img_all: Tensor, txt_all: Tensor, scale: Tensor, rank: int
) -> Tensor:
    """Plain CLIP InfoNCE (clip_baseline preset): one-hot targets at g(i) = rank·b + i."""
    hard = diagonal_targets(img_local.shape[0], img_all.shape[0], rank, device=img_local.device)
    return n_itc(img_local, txt_local, img_all, txt_all, scale, targets_i2t=hard, targets_t2i=hard)


def _reverse_kl(logits: Tensor, log_targets: Tensor) -> Tensor:
    """(1/b)·Σ_i Σ_j p_ij·[log p_ij − log(q̂_ij + ε)]; p = softmax(logits), gradient through p only."""
    log_p = _at_least_fp32(logits).log_softmax(dim=1)
    return (log_p.exp() * (log_p - log_targets.to(log_p.dtype))).sum(dim=1).mean()


def r_itc(
    img_local: Tensor,
    txt_local: Tensor,
    img_all: Tensor,
    txt_all: Tensor,
    scale: Tensor,
    *,
    targets: Tensor,
    eps: float,
) -> Tensor:
    """R-ITC = ½(KL^{i2t} + KL^{t2i}) with KL(p ‖ q̂ + ε), q̂ + ε not renormalised.

    ``targets`` is q̂ (b x B): the hard identity targets of :func:`identity_targets`, or
    :func:`diagonal_targets` when identity targets are off. It is treated as a constant.
    """
    logits_i2t, logits_t2i = _similarity_logits(img_local, txt_local, img_all, txt_all, scale)
    log_targets = (targets.detach().to(logits_i2t.device) + eps).log()
    return 0.5 * (_reverse_kl(logits_i2t, log_targets) + _reverse_kl(logits_t2i, log_targets))


def c_itc_terms(img_all: Tensor, txt_all: Tensor) -> tuple[Tensor, Tensor]:
    """(C^I, C^C): means over the B² pairs of (v_j·v_k − t_j·t_k)² and (v_j·t_k − t_j·v_k)².

    Computed on the gathered features, identically on every process (see tbps.distributed for
    why that keeps the DDP gradient exact).
    """
    # Both terms are differences of nearly equal similarities once the modalities align, which
    # half-precision products would swamp; so this runs in (at least) fp32 even under autocast.
    with torch.autocast(device_type=img_all.device.type, enabled=False):
        v, t = _at_least_fp32(img_all), _at_least_fp32(txt_all)
        vt = v @ t.t()
        c_inter = ((v @ v.t() - t @ t.t()) ** 2).mean()
        c_cross = ((vt - vt.t()) ** 2).mean()
    return c_inter, c_cross


def c_itc(img_all: Tensor, txt_all: Tensor, *, term_weight: float) -> Tensor:
    """term_weight·(C^I + C^C). The overall C-ITC weight is applied by :func:`combine_losses`."""
    c_inter, c_cross = c_itc_terms(img_all, txt_all)
    return term_weight * (c_inter + c_cross)


def nt_xent(
    za_local: Tensor, zb_local: Tensor, za_all: Tensor, zb_all: Tensor, rank: int, *, temperature: float
) -> Tensor:
    """Symmetric NT-Xent over gathered SimCLR embeddings of two views, identities ignored (paper Eq. 3).

    SS-I applies it to the image views' head outputs, SS-T to the caption views'. Anchor z^a_i has
    logits z^a_i·z^b_j/τ (j = 1..B) followed by z^a_i·z^a_j/τ (j ≠ g(i)) and target g(i); z^b_i
    likewise with the roles swapped. Returns ½[mean_i ℓ^a_i + mean_i ℓ^b_i].
    """
    b, big_b = za_local.shape[0], za_all.shape[0]
    start = rank * b
    if start + b > big_b:
        raise ValueError(f"rank {rank} x {b} local rows does not fit in {big_b} gathered rows")
    own = start + torch.arange(b, device=za_local.device)
    # Self-similarity is excluded by masking it to -inf, which is the same softmax as deleting it;
    # the target g(i) < B is unaffected by the masked column at B + g(i).
    self_mask = torch.zeros(b, 2 * big_b, dtype=torch.bool, device=za_local.device)
    self_mask[torch.arange(b, device=za_local.device), big_b + own] = True

    def one_side(anchor: Tensor, other_all: Tensor, same_all: Tensor) -> Tensor:
        logits = (
            _at_least_fp32(torch.cat([anchor @ other_all.t(), anchor @ same_all.t()], dim=1)) / temperature
        )
        return F.cross_entropy(logits.masked_fill(self_mask, float("-inf")), own)

    return 0.5 * (one_side(za_local, zb_all, za_all) + one_side(zb_local, za_all, zb_all))


def combine_losses(
    n_itc_main: Tensor,
    *,
    n_itc_mvs: Tensor | None = None,
    n_itc_mvs_t: Tensor | None = None,
    n_itc_mvs_it: Tensor | None = None,
    r_itc: Tensor | None = None,
    ss_i: Tensor | None = None,
    ss_t: Tensor | None = None,
    c_itc: Tensor | None = None,
    mvs_mode: str,
    r_weight: float,
    ss_i_weight: float,
    ss_t_weight: float,
    c_weight: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss from the per-term values (spec §6 "Total loss").

    ``n_itc_main`` is N-ITC(V,T) (or the plain CLIP loss). The multi-view terms ``n_itc_mvs``
    (MVS-I: N-ITC(Ṽ,T)), ``n_itc_mvs_t`` (MVS-T: N-ITC(V,T̃)) and ``n_itc_mvs_it`` (MVS-IT:
    N-ITC(Ṽ,T̃)) join it by ``mvs_mode``: 'average' = the mean of the N-ITC terms present (MVS-I
    alone: ½[N-ITC(V,T) + N-ITC(Ṽ,T)], official), 'add' = their sum (paper). ``c_itc`` is the
    already term-weighted :func:`c_itc` value, multiplied here by ``c_weight``. A term that is None
    or has weight 0 is left out. Returns (total, detached terms for logging, including 'total').
    """
    if mvs_mode not in MVS_MODES:
        raise ValueError(f"mvs_mode must be one of {MVS_MODES}, got {mvs_mode!r}")
    terms: dict[str, Tensor] = {"n_itc": n_itc_main}
    total = n_itc_main
    views = 1
    for name, value in (("n_itc_mvs", n_itc_mvs), ("n_itc_mvs_t", n_itc_mvs_t), ("n_itc_mvs_it", n_itc_mvs_it)):
        if value is not None:
            terms[name] = value
            total = total + value
            views += 1
    if mvs_mode == "average" and views > 1:
        total = total / views
    for name, value, weight in (
        ("r_itc", r_itc, r_weight),
        ("ss_i", ss_i, ss_i_weight),
        ("ss_t", ss_t, ss_t_weight),
        ("c_itc", c_itc, c_weight),
    ):
        if value is not None and weight != 0:
            terms[name] = value
            total = total + weight * value
    logged = {name: value.detach() for name, value in terms.items()}
    logged["total"] = total.detach()
    return total, logged
