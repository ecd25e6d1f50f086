"""Process-group set-up and the all-gather used by the contrastive losses (spec §6, "GlobalGrad").

Every loss in :mod:`tbps.losses` sees the *local* rows of the batch (b = B / P per process) and the
*gathered* columns (all B samples). Two gathers exist:

* :func:`gather_with_grad` (GlobalGrad). Backward all-reduces (SUMS) the gradient that every
  process computed for every gathered slot and returns this process's own slot. With
  ``DistributedDataParallel`` averaging parameter gradients over P processes this yields exactly the
  gradient of the single-device loss over B rows:

  - Row-averaged terms (N-ITC, R-ITC, SS-I, CLIP). Process r computes
    ``L_r = (1/b) * sum_{i local} l_i`` and the single-device loss is ``L = (1/B) sum_i l_i =
    (1/P) sum_r L_r``. Process r back-propagates ``sum_{r'} dL_{r'}/d(slot r)`` (plus the direct
    path of its own rows) through its own encoder; DDP's 1/P average of these sums is
    ``(1/P) sum_{r'} dL_{r'}/d(theta) = dL/d(theta)``.
  - Batch-global terms (C-ITC), computed identically on every process from gathered features:
    ``L_r = L`` for all r, so slot r receives ``P * dL/d(slot r)``; DDP's 1/P average turns that
    into exactly ``dL/d(theta)``. No extra scaling is needed by the caller.

  Hence the training loop needs no helper beyond DDP itself; it must only make the global batch
  divisible by P (:func:`local_batch_size`) so that all processes gather equal-sized slices.

* :func:`gather_no_grad` (the non-GlobalGrad baseline): the other processes' slices are constants;
  this process's own slice is the local tensor itself, so gradients still flow through the local
  rows *and* through the local columns' own slice, but never to or from the other processes.

Both gathers are the identity when the job is not distributed (world size 1), so the same loss code
runs on one device at batch B.

* :func:`emulated_gather_no_grad` reproduces the baseline's gradients with fewer real processes than
  the P it emulates (``loss.emulated_processes``; e.g. one process holding all B rows): for virtual
  rank r it returns the gathered batch with every slice but r's detached, which is what
  ``gather_no_grad`` returns on real process r of P. Averaging the virtual ranks' losses then gives
  the gradient that P real processes without GlobalGrad average by DDP.

Collective-ordering rule: every process must call the same gathers in the same order, and every
gathered tensor must receive a gradient on every process (true when the loss code is the same on
all processes), otherwise the backward all-reduce would wait forever.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tbps.device import resolve_device

log = logging.getLogger(__name__)

_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job. ``world_size == 1`` means no process group exists."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not an integer. Fix: launch with torchrun "
            f"(python -m torch.distributed.run) or unset {name} for a single-process run"
        ) from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    ``device``: as :func:`tbps.device.resolve_device` ("auto": CUDA if available, else CPU). CUDA
    uses the NCCL backend and device ``cuda:LOCAL_RANK``; CPU uses gloo. Without torchrun's variables (or with
    WORLD_SIZE=1) nothing is initialised and a single-process :class:`DistInfo` is returned.
    Calling it again after the group exists returns the current info without re-initialising.
    """
    use_cuda = resolve_device(device).type == "cuda"

    world_size = _env_int("WORLD_SIZE") or 1
    rank = _env_int("RANK") or 0
    local_rank = _env_int("LOCAL_RANK") or 0
    if world_size > 1 and (_env_int("RANK") is None or _env_int("LOCAL_RANK") is None):
        missing = [name for name in _ENV_VARS if os.environ.get(name) in (None, "")]
        raise ValueError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} unset. Fix: launch with torchrun, which sets all of "
            + ", ".join(_ENV_VARS)
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world_size})")

    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")

    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        # device_id binds NCCL's communicator to this GPU eagerly (avoids a guessed-device warning).
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        log.info("joined process group: rank %d/%d, backend %s, device %s", rank, world_size, backend, dev)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 and in single-process runs: the process that writes files and logs."""
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_batch_size(global_batch: int, world_size: int) -> int:
    """b = B / P. Equal slices are required: all-gather needs the same shape on every process."""
    if global_batch <= 0 or world_size <= 0:
        raise ValueError(f"batch size ({global_batch}) and world size ({world_size}) must be positive")
    if global_batch % world_size:
        raise ValueError(
            f"global batch {global_batch} is not divisible by {world_size} processes. "
            f"Fix: choose a batch size that is a multiple of the number of processes"
        )
    return global_batch // world_size


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over processes of a (detached) tensor, for logging. Returns a new tensor."""
    out = tensor.detach().clone()
    world = get_world_size()
    if world > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= world
    return out


def _all_gather_cat(x: torch.Tensor) -> list[torch.Tensor]:
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(parts, x)
    return parts


def gather_constant(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 with no gradient at all (ids, no-grad soft-label features)."""
    if get_world_size() == 1:
        return x.detach()
    with torch.no_grad():
        return torch.cat(_all_gather_cat(x.detach()), dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward = all_reduce(SUM) of the incoming gradient, keep own slice.

    Equivalent to a reduce-scatter; the all-reduce form is used because it works on every backend
    (gloo has no reduce-scatter) and the tensors are small (B x 512).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank = dist.get_rank()
        ctx.local_rows = x.shape[0]
        return torch.cat(_all_gather_cat(x), dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local_rows
        return grad[start : start + ctx.local_rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """GlobalGrad all-gather along dim 0 (see module docstring). Identity when world size is 1."""
    if get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Baseline all-gather: other processes' slices are constants, own slice is ``x`` itself.

    Keeping ``x`` in its own slot (instead of a detached copy) lets the local features get the
    gradient of their appearance as columns too, as a single device at batch b would.
    """
    world = get_world_size()
    if world == 1:
        return x
    with torch.no_grad():
        parts = _all_gather_cat(x.detach())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def emulated_gather_no_grad(x_all: torch.Tensor, rank: int, local_rows: int) -> torch.Tensor:
    """The baseline gather of virtual process ``rank`` on one device: ``x_all`` (all B rows) with only
    rows ``rank * local_rows ...`` keeping their gradient, the other slices constants."""
    start, end = rank * local_rows, (rank + 1) * local_rows
    if rank < 0 or end > x_all.shape[0]:
        raise ValueError(f"virtual rank {rank} x {local_rows} rows does not fit in {x_all.shape[0]} rows")
    return torch.cat([x_all[:start].detach(), x_all[start:end], x_all[end:].detach()], dim=0)
