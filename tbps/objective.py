"""One training step's loss: the TBPS-CLIP terms wired to gathered embeddings.

Kept apart from the loop so the same function serves the plain step, the
gradient-cached step and the tests. This is the one place where the experiment's
:class:`~tbps.config.LossConfig` becomes the numbers that the pure functions of
:mod:`tbps.losses` take.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tbps import losses
from tbps.config import LossConfig
from tbps.distributed import gather_constant, gather_no_grad, gather_with_grad


def step_loss(
    emb: dict[str, Tensor],
    ids_local: Tensor,
    scale: Tensor,
    loss_cfg: LossConfig,
    *,
    alpha: float,
    rank: int,
    nograd: dict[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss of one step from the local embeddings (L2-normalised).

    ``emb`` holds ``image``, ``text`` and, when the recipe uses them, ``image_mvs``,
    ``simclr_a``, ``simclr_b``. ``nograd`` holds the second, no-grad pass (``image``,
    ``text``, ``image_mvs``) used for soft labels when ``alpha > 0``. ``scale`` is the clamped
    logit scale (it carries the gradient to θ).
    """
    gather = gather_with_grad if loss_cfg.global_grad else gather_no_grad
    v, t = emb["image"], emb["text"]
    v_all, t_all = gather(v), gather(t)
    ids_all = gather_constant(ids_local)
    b, big_b = v.shape[0], v_all.shape[0]
    if loss_cfg.identity_targets:
        hard = losses.identity_targets(ids_local, ids_all).to(v.device)
    else:
        hard = losses.diagonal_targets(b, big_b, rank, device=v.device)

    def targets_for(image_key: str) -> tuple[Tensor, Tensor]:
        if alpha <= 0 or nograd is None:
            return hard, hard
        v_ng, t_ng = nograd[image_key], nograd["text"]
        v_ng_all, t_ng_all = gather_constant(v_ng), gather_constant(t_ng)
        s = scale.detach()
        return (
            losses.soft_targets(hard, s * v_ng @ t_ng_all.t(), alpha),
            losses.soft_targets(hard, s * t_ng @ v_ng_all.t(), alpha),
        )

    i2t, t2i = targets_for("image")
    n_main = losses.n_itc(v, t, v_all, t_all, scale, targets_i2t=i2t, targets_t2i=t2i)
    n_mvs = None
    if loss_cfg.mvs_i and "image_mvs" in emb:
        vm = emb["image_mvs"]
        i2t_m, t2i_m = targets_for("image_mvs")
        n_mvs = losses.n_itc(vm, t, gather(vm), t_all, scale, targets_i2t=i2t_m, targets_t2i=t2i_m)
    r = None
    if loss_cfg.r_itc_weight:
        r = losses.r_itc(v, t, v_all, t_all, scale, targets=hard, eps=loss_cfg.r_itc_eps)
    c = losses.c_itc(v_all, t_all, term_weight=loss_cfg.c_itc_term_weight) if loss_cfg.c_itc_weight else None
    ss = None
    if loss_cfg.uses_ss_i and "simclr_a" in emb:
        za, zb = emb["simclr_a"], emb["simclr_b"]
        ss = losses.ss_i_nt_xent(za, zb, gather(za), gather(zb), rank, temperature=loss_cfg.ss_i_temperature)
    return losses.combine_losses(
        n_main, n_itc_mvs=n_mvs, r_itc=r, ss_i=ss, c_itc=c, mvs_mode=loss_cfg.mvs_mode,
        r_weight=loss_cfg.r_itc_weight, ss_weight=loss_cfg.ss_i_weight, c_weight=loss_cfg.c_itc_weight,
    )


def batch_inputs(batch: dict[str, Tensor], loss_cfg: LossConfig) -> dict[str, Tensor]:
    """The encoder inputs one step needs, by embedding name."""
    inputs = {"image": batch["image"], "text": batch["tokens"]}
    if loss_cfg.mvs_i and "image_mvs" in batch:
        inputs["image_mvs"] = batch["image_mvs"]
    if loss_cfg.uses_ss_i and "simclr_a" in batch:
        inputs["simclr_a"] = batch["simclr_a"]
        inputs["simclr_b"] = batch["simclr_b"]
    return inputs


@torch.no_grad()
def nograd_pass(encode, inputs: dict[str, Tensor], chunk: int) -> dict[str, Tensor]:
    """The soft-label pass: same model, train mode (fresh dropout masks), no graph."""
    out = {}
    for name in ("image", "text", "image_mvs"):
        if name in inputs:
            x = inputs[name]
            size = chunk if chunk > 0 else x.shape[0]
            out[name] = torch.cat([encode(name, part) for part in torch.split(x, size)])
    return out
