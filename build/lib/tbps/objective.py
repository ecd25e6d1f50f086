"""One training step's loss: the TBPS-CLIP terms wired to gathered embeddings.

Kept apart from the loop so the same function serves the plain step, the
gradient-cached step and the tests. This is the one place where the experiment's
:class:`~tbps.config.LossConfig` becomes the numbers that the pure functions of
:mod:`tbps.losses` take.

Embedding names (the keys of ``emb`` and of the encoder inputs), the tower each goes through
(``ENCODERS``) and the batch key it comes from (``BATCH_KEYS``):

- ``image``, ``text``: the pair (every preset);
- ``image_mvs``: the second image view Ĩ (MVS-I, MVS-IT); ``text_mvs``: the second caption view T̃
  (MVS-T, MVS-IT);
- ``simclr_a``, ``simclr_b``: the SimCLR image views through the image head (SS-I);
- ``text_ss_a``, ``text_ss_b``: two caption views through the text head (SS-T).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tbps import losses
from tbps.config import LossConfig
from tbps.distributed import (
    emulated_gather_no_grad,
    gather_constant,
    gather_no_grad,
    gather_with_grad,
    get_world_size,
)
from tbps.errors import UserInputError

ENCODERS = {
    "image": "encode_image", "image_mvs": "encode_image", "text": "encode_text", "text_mvs": "encode_text",
    "simclr_a": "simclr", "simclr_b": "simclr", "text_ss_a": "text_simclr", "text_ss_b": "text_simclr",
}
"""Embedding name -> the :class:`~tbps.model.clip.TBPSModel` method that encodes its input."""
BATCH_KEYS = {
    "image": "image", "text": "tokens", "image_mvs": "image_mvs", "text_mvs": "tokens_mvs",
    "simclr_a": "simclr_a", "simclr_b": "simclr_b", "text_ss_a": "tokens_ss_a", "text_ss_b": "tokens_ss_b",
}
"""Embedding name -> the loader's batch key holding its input."""
NOGRAD_NAMES = ("image", "text", "image_mvs", "text_mvs")
"""Embeddings that the soft-label (no-grad) pass encodes: the N-ITC views."""


def embedding_names(loss_cfg: LossConfig) -> tuple[str, ...]:
    """The embeddings one step of ``loss_cfg`` needs."""
    names = ["image", "text"]
    if loss_cfg.uses_image_mvs:
        names.append("image_mvs")
    if loss_cfg.uses_text_mvs:
        names.append("text_mvs")
    if loss_cfg.uses_ss_i:
        names += ["simclr_a", "simclr_b"]
    if loss_cfg.uses_ss_t:
        names += ["text_ss_a", "text_ss_b"]
    return tuple(names)


def text_view_keys(loss_cfg: LossConfig) -> tuple[str, ...]:
    """The extra caption views the loader must produce for ``loss_cfg`` (none for the recipe)."""
    return tuple(BATCH_KEYS[name] for name in embedding_names(loss_cfg) if name in ("text_mvs", "text_ss_a",
                                                                                    "text_ss_b"))


def check_process_emulation(loss_cfg: LossConfig, *, world_size: int, global_batch: int) -> None:
    """``loss.emulated_processes`` > 1 needs no GlobalGrad, a multiple of the real processes and a batch
    divisible by it."""
    processes = loss_cfg.emulated_processes
    if processes == 1:
        return
    if loss_cfg.global_grad:
        raise UserInputError(
            f"loss.emulated_processes={processes} with loss.global_grad true: with GlobalGrad, P processes compute "
            "exactly the one-device loss, so there is nothing to emulate. Fix: set loss.global_grad: false "
            "(the paper's non-GlobalGrad rows) or loss.emulated_processes: 1"
        )
    if processes % world_size:
        raise UserInputError(
            f"loss.emulated_processes={processes} is not a multiple of the {world_size} real processes. Fix: run "
            f"on a number of processes that divides {processes}, or set loss.emulated_processes to a multiple of "
            f"{world_size}"
        )
    if global_batch % processes:
        raise UserInputError(
            f"data.batch_size={global_batch} is not divisible by loss.emulated_processes={processes}. "
            "Fix: use a batch size that is a multiple of it (the paper: 4 x 80 = 320)"
        )


class _ProcessView:
    """What one (real or emulated) process sees: its local rows and the gathered columns."""

    def __init__(self, emb: dict[str, Tensor], nograd: dict[str, Tensor] | None, ids_local: Tensor,
                 ids_all: Tensor, rank: int, *, local: Callable[[Tensor], Tensor],
                 gather: Callable[[Tensor], Tensor], gather_nograd: Callable[[Tensor], Tensor]):
        self._emb, self._nograd = emb, nograd
        self.ids_local, self.ids_all, self.rank = ids_local, ids_all, rank
        self._local, self._gather, self._gather_nograd = local, gather, gather_nograd
        # Each tensor is gathered once, at its first use: the same order on every process.
        self._gathered: dict[tuple[str, bool], Tensor] = {}

    def has(self, *names: str) -> bool:
        return all(name in self._emb for name in names)

    @property
    def has_nograd(self) -> bool:
        return self._nograd is not None

    def local(self, name: str) -> Tensor:
        return self._local(self._emb[name])

    def gathered(self, name: str) -> Tensor:
        key = (name, True)
        if key not in self._gathered:
            self._gathered[key] = self._gather(self._emb[name])
        return self._gathered[key]

    def nograd_local(self, name: str) -> Tensor:
        return self._local(self._nograd[name])

    def nograd_gathered(self, name: str) -> Tensor:
        key = (name, False)
        if key not in self._gathered:
            self._gathered[key] = self._gather_nograd(self._nograd[name])
        return self._gathered[key]


def _process_terms(view: _ProcessView, scale: Tensor, loss_cfg: LossConfig,
                   alpha: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and logged terms of one process's rows."""
    v, t = view.local("image"), view.local("text")
    v_all, t_all = view.gathered("image"), view.gathered("text")
    b, big_b = v.shape[0], v_all.shape[0]
    if loss_cfg.identity_targets:
        # fp32 under autocast, fp64 for fp64 features (tests): 1/k is not exact in fp32.
        dtype = torch.promote_types(v.dtype, torch.float32)
        hard = losses.identity_targets(view.ids_local, view.ids_all, dtype).to(v.device)
    else:
        hard = losses.diagonal_targets(b, big_b, view.rank, device=v.device)

    def targets_for(image_key: str, text_key: str) -> tuple[Tensor, Tensor]:
        if alpha <= 0 or not view.has_nograd:
            return hard, hard
        v_ng, t_ng = view.nograd_local(image_key), view.nograd_local(text_key)
        v_ng_all, t_ng_all = view.nograd_gathered(image_key), view.nograd_gathered(text_key)
        s = scale.detach()
        return (
            losses.soft_targets(hard, s * v_ng @ t_ng_all.t(), alpha),
            losses.soft_targets(hard, s * t_ng @ v_ng_all.t(), alpha),
        )

    def n_itc_on(image_key: str, text_key: str) -> Tensor:
        i2t, t2i = targets_for(image_key, text_key)
        return losses.n_itc(view.local(image_key), view.local(text_key), view.gathered(image_key),
                            view.gathered(text_key), scale, targets_i2t=i2t, targets_t2i=t2i)

    n_main = n_itc_on("image", "text")
    n_mvs = n_itc_on("image_mvs", "text") if loss_cfg.mvs_i and view.has("image_mvs") else None
    n_mvs_t = n_itc_on("image", "text_mvs") if loss_cfg.mvs_t and view.has("text_mvs") else None
    n_mvs_it = n_itc_on("image_mvs", "text_mvs") if loss_cfg.mvs_it and view.has("image_mvs", "text_mvs") else None
    r = None
    if loss_cfg.r_itc_weight:
        r = losses.r_itc(v, t, v_all, t_all, scale, targets=hard, eps=loss_cfg.r_itc_eps)
    c = losses.c_itc(v_all, t_all, term_weight=loss_cfg.c_itc_term_weight) if loss_cfg.c_itc_weight else None

    def nt_xent_on(a: str, b_: str, temperature: float) -> Tensor | None:
        if not view.has(a, b_):
            return None
        return losses.nt_xent(view.local(a), view.local(b_), view.gathered(a), view.gathered(b_), view.rank,
                              temperature=temperature)

    ss_i = nt_xent_on("simclr_a", "simclr_b", loss_cfg.ss_i_temperature) if loss_cfg.uses_ss_i else None
    ss_t = nt_xent_on("text_ss_a", "text_ss_b", loss_cfg.ss_t_temperature) if loss_cfg.uses_ss_t else None
    return losses.combine_losses(
        n_main, n_itc_mvs=n_mvs, n_itc_mvs_t=n_mvs_t, n_itc_mvs_it=n_mvs_it, r_itc=r, ss_i=ss_i, ss_t=ss_t, c_itc=c,
        mvs_mode=loss_cfg.mvs_mode, r_weight=loss_cfg.r_itc_weight, ss_i_weight=loss_cfg.ss_i_weight,
        ss_t_weight=loss_cfg.ss_t_weight, c_weight=loss_cfg.c_itc_weight,
    )


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

    ``emb`` holds the embeddings of :func:`embedding_names` (module docstring). ``nograd`` holds the
    second, no-grad pass (``NOGRAD_NAMES``) used for soft labels when ``alpha > 0``. ``scale`` is the
    clamped logit scale (it carries the gradient to θ).

    With ``loss_cfg.emulated_processes`` = P (no GlobalGrad) larger than the W real processes, each
    process splits its rows into P/W virtual ranks; each computes this loss on its rows against all
    columns, where only its own slice carries gradient (:func:`tbps.distributed.emulated_gather_no_grad`),
    and the total and the logged terms are the mean over the virtual ranks. With the processes'
    gradients averaged, that is what P real processes without GlobalGrad compute, whatever W is.
    """
    world = get_world_size()
    per_process = loss_cfg.emulated_processes // world
    if per_process <= 1:
        gather = gather_with_grad if loss_cfg.global_grad else gather_no_grad
        view = _ProcessView(emb, nograd, ids_local, gather_constant(ids_local), rank, local=lambda x: x,
                            gather=gather, gather_nograd=gather_constant)
        return _process_terms(view, scale, loss_cfg, alpha)

    if loss_cfg.global_grad or loss_cfg.emulated_processes % world or ids_local.shape[0] % per_process:
        raise ValueError(
            f"emulating {loss_cfg.emulated_processes} processes needs global_grad false, a multiple of the "
            f"{world} real processes and a local batch divisible by {per_process} (got global_grad="
            f"{loss_cfg.global_grad}, local batch {ids_local.shape[0]}); see check_process_emulation"
        )
    b = ids_local.shape[0] // per_process
    # One all-gather per tensor serves every virtual rank of this process (the baseline gather: the
    # other real processes' rows are constants), and each virtual rank keeps the gradient of its own
    # slice only.
    gathered: dict[int, Tensor] = {}

    def gather_all(x: Tensor) -> Tensor:
        if id(x) not in gathered:
            gathered[id(x)] = gather_no_grad(x)
        return gathered[id(x)]

    ids_all = gather_constant(ids_local)
    totals, logs = [], []
    for k in range(per_process):
        virtual_rank = rank * per_process + k
        rows = slice(k * b, (k + 1) * b)
        view = _ProcessView(
            emb, nograd, ids_local[rows], ids_all, virtual_rank, local=lambda x, rows=rows: x[rows],
            gather=lambda x, r=virtual_rank: emulated_gather_no_grad(gather_all(x), r, b),
            gather_nograd=lambda x: gather_all(x).detach(),
        )
        total, logged = _process_terms(view, scale, loss_cfg, alpha)
        totals.append(total)
        logs.append(logged)
    mean_logs = {name: torch.stack([log[name] for log in logs]).mean() for name in logs[0]}
    return torch.stack(totals).mean(), mean_logs


def batch_inputs(batch: dict[str, Tensor], loss_cfg: LossConfig) -> dict[str, Tensor]:
    """The encoder inputs one step needs, by embedding name (those the batch holds)."""
    return {name: batch[BATCH_KEYS[name]] for name in embedding_names(loss_cfg) if BATCH_KEYS[name] in batch}


@torch.no_grad()
def nograd_pass(encode, inputs: dict[str, Tensor], chunk: int) -> dict[str, Tensor]:
    """The soft-label pass: same model, train mode (fresh dropout masks), no graph."""
    out = {}
    for name in NOGRAD_NAMES:
        if name in inputs:
            x = inputs[name]
            size = chunk if chunk > 0 else x.shape[0]
            out[name] = torch.cat([encode(name, part) for part in torch.split(x, size)])
    return out
