"""GlobalGrad under real multi-process DDP (gloo, CPU) equals one process at the whole batch (docs/method.md#globalgrad).

Two spawned processes each hold b = 4 samples of a tiny dual encoder (two Linear "encoders", a
SimCLR head and a logit scale) wrapped in DistributedDataParallel, and compute the full-preset loss
(N-ITC with soft targets and MVS-I, R-ITC, C-ITC, SS-I) over gathered features. Their losses average,
and their DDP-averaged parameter gradients equal, the loss and gradients of ONE process on the
concatenated B = 8 samples — term by term and in total. The no-grad-gather baseline must differ.

The same processes also run tbps.objective.step_loss with every loss variant (MVS-T, MVS-IT, SS-T on
top of the recipe) with and without GlobalGrad: with it they match one process; without it they
match one process emulating two (``loss.emulated_processes``), the study's stand-in for the paper's
non-GlobalGrad rows; emulating four, they match one process emulating four.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from tbps import distributed as tdist
from tbps.config import LossConfig
from tbps.losses import (
    c_itc,
    clamped_logit_scale,
    combine_losses,
    identity_targets,
    n_itc,
    nt_xent,
    r_itc,
    soft_targets,
)
from tbps.objective import ENCODERS, NOGRAD_NAMES, step_loss

WORLD = 2
LOCAL_B = 4
IN_IMG, IN_TXT, EMBED = 12, 10, 8
ALPHA = 0.3
# Repeated ids inside one process and across the two processes.
IDS = torch.tensor([3, 1, 3, 8, 1, 5, 8, 8])
TERMS = ("n_itc", "n_itc_mvs", "r_itc", "c_itc", "ss_i", "total")


class TinyDualEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(IN_IMG, EMBED)
        self.text = nn.Linear(IN_TXT, EMBED)
        self.head = nn.Sequential(nn.Linear(EMBED, 4), nn.ReLU(), nn.Linear(4, EMBED))
        self.theta = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        def unit(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(x, dim=1)

        return {
            "v": unit(self.image(batch["images"])),
            "v_mvs": unit(self.image(batch["images_mvs"])),
            "t": unit(self.text(batch["texts"])),
            "za": unit(self.head(self.image(batch["view_a"]))),
            "zb": unit(self.head(self.image(batch["view_b"]))),
            "scale": clamped_logit_scale(self.theta),
        }


def make_model() -> TinyDualEncoder:
    torch.manual_seed(0)
    return TinyDualEncoder().double()


def global_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    n = WORLD * LOCAL_B
    shapes = {"images": IN_IMG, "images_mvs": IN_IMG, "texts": IN_TXT, "view_a": IN_IMG, "view_b": IN_IMG}
    batch = {key: torch.randn(n, dim, generator=gen, dtype=torch.float64) for key, dim in shapes.items()}
    batch["ids"] = IDS.clone()
    return batch


def full_preset_terms(out, out_nograd, ids_local, rank, gather) -> dict[str, torch.Tensor]:
    """The full preset's loss terms for this process's rows, built only from tbps.losses."""
    ids_all = tdist.gather_constant(ids_local)
    v_all, vm_all, t_all = gather(out["v"]), gather(out["v_mvs"]), gather(out["t"])
    za_all, zb_all = gather(out["za"]), gather(out["zb"])
    s = out["scale"]

    v2_all, vm2_all, t2_all = (tdist.gather_constant(out_nograd[k]) for k in ("v", "v_mvs", "t"))
    hard = identity_targets(ids_local, ids_all, torch.float64)
    sd = s.detach()
    n1 = n_itc(
        out["v"], out["t"], v_all, t_all, s,
        targets_i2t=soft_targets(hard, sd * out_nograd["v"] @ t2_all.t(), ALPHA),
        targets_t2i=soft_targets(hard, sd * out_nograd["t"] @ v2_all.t(), ALPHA),
    )  # fmt: skip
    n2 = n_itc(
        out["v_mvs"], out["t"], vm_all, t_all, s,
        targets_i2t=soft_targets(hard, sd * out_nograd["v_mvs"] @ t2_all.t(), ALPHA),
        targets_t2i=soft_targets(hard, sd * out_nograd["t"] @ vm2_all.t(), ALPHA),
    )  # fmt: skip
    terms = {
        "n_itc": n1,
        "n_itc_mvs": n2,
        "r_itc": r_itc(out["v"], out["t"], v_all, t_all, s, targets=hard, eps=1e-2),
        "c_itc": c_itc(v_all, t_all, term_weight=0.25),
        "ss_i": nt_xent(out["za"], out["zb"], za_all, zb_all, rank, temperature=0.1),
    }
    terms["total"], _ = combine_losses(
        n1, n_itc_mvs=n2, r_itc=terms["r_itc"], ss_i=terms["ss_i"], c_itc=terms["c_itc"], mvs_mode="average",
        r_weight=1.0, ss_i_weight=0.4, ss_t_weight=0.0, c_weight=0.1,
    )
    return terms


def losses_and_grads(model, forward, batch, rank, gather) -> dict[str, dict[str, torch.Tensor]]:
    """For every term: (loss value, gradient of every parameter) after one backward pass."""
    results = {}
    for term in TERMS:
        model.zero_grad(set_to_none=True)
        out = forward(batch)
        with torch.no_grad():
            out_nograd = model(batch)
        loss = full_preset_terms(out, out_nograd, batch["ids"], rank, gather)[term]
        # Zero-weighted use of every output keeps all parameters in each graph, as DDP requires.
        loss = loss + 0.0 * sum(value.sum() for value in out.values())
        loss.backward()
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
        results[term] = {"loss": loss.detach().clone(), **grads}
    return results


class ObjectiveEncoder(nn.Module):
    """The towers tbps.objective names (tbps.objective.ENCODERS), small: every view of every loss variant."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(IN_IMG, EMBED)
        self.text = nn.Linear(IN_TXT, EMBED)
        self.image_head = nn.Sequential(nn.Linear(EMBED, 4), nn.ReLU(), nn.Linear(4, EMBED))
        self.text_head = nn.Sequential(nn.Linear(EMBED, 4), nn.ReLU(), nn.Linear(4, EMBED))
        self.theta = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, x):
        return F.normalize(self.image(x), dim=1)

    def encode_text(self, x):
        return F.normalize(self.text(x), dim=1)

    def simclr(self, x):
        return F.normalize(self.image_head(self.image(x)), dim=1)

    def text_simclr(self, x):
        return F.normalize(self.text_head(self.text(x)), dim=1)


# Every loss variant at once: the recipe's terms plus MVS-T, MVS-IT and SS-T.
OBJECTIVE_LOSS = LossConfig(mvs_t=True, mvs_it=True, ss_t_weight=0.4)


def objective_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    dims = {"image": IN_IMG, "image_mvs": IN_IMG, "simclr_a": IN_IMG, "simclr_b": IN_IMG, "text": IN_TXT,
            "text_mvs": IN_TXT, "text_ss_a": IN_TXT, "text_ss_b": IN_TXT}
    return {name: torch.randn(WORLD * LOCAL_B, dim, generator=gen, dtype=torch.float64) for name, dim in dims.items()}


def objective_gradients(rows: slice, rank: int, loss_cfg: LossConfig) -> dict[str, torch.Tensor]:
    """tbps.objective.step_loss on ``rows`` of the batch, parameter gradients averaged over the processes
    (as tbps.train does), and the loss averaged likewise."""
    torch.manual_seed(0)
    model = ObjectiveEncoder().double()
    inputs = {name: x[rows] for name, x in objective_batch().items()}
    emb = {name: getattr(model, ENCODERS[name])(x) for name, x in inputs.items()}
    with torch.no_grad():
        nograd = {name: getattr(model, ENCODERS[name])(inputs[name]) + 0.05 for name in NOGRAD_NAMES}
    loss, _ = step_loss(emb, IDS[rows], clamped_logit_scale(model.theta), loss_cfg, alpha=ALPHA, rank=rank,
                        nograd=nograd)
    loss.backward()
    out = {name: tdist.all_reduce_mean(p.grad) for name, p in model.named_parameters()}
    out["loss"] = tdist.all_reduce_mean(loss.detach())
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    info = tdist.init_distributed(device="cpu")
    try:
        assert (info.rank, info.world_size, info.is_distributed) == (rank, WORLD, True)
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        batch = {key: value[rows] for key, value in global_batch().items()}
        results: dict[str, torch.Tensor] = {}

        for label, gather in (("global", tdist.gather_with_grad), ("baseline", tdist.gather_no_grad)):
            model = make_model()
            ddp = nn.parallel.DistributedDataParallel(model)
            for term, values in losses_and_grads(model, ddp, batch, rank, gather).items():
                for name, tensor in values.items():
                    results[f"{label}/{term}/{name}"] = tensor
            results[f"{label}/loss_mean"] = tdist.all_reduce_mean(results[f"{label}/total/loss"])

        # The objective with every loss variant, with and without GlobalGrad, on real processes.
        for label, loss_cfg in (
            ("objective_global", OBJECTIVE_LOSS),
            ("objective_baseline", dataclasses.replace(OBJECTIVE_LOSS, global_grad=False)),
            ("objective_emulating_4", dataclasses.replace(OBJECTIVE_LOSS, global_grad=False, emulated_processes=4)),
        ):
            for name, tensor in objective_gradients(rows, rank, loss_cfg).items():
                results[f"{label}/{name}"] = tensor

        # Gather semantics on a bare tensor: slot r's gradient is the SUM over processes of what each
        # sent to slot r (GlobalGrad), or only this process's own contribution (baseline).
        for label, gather in (
            ("gather_global", tdist.gather_with_grad),
            ("gather_baseline", tdist.gather_no_grad),
        ):
            x = torch.full((2, 3), float(rank + 1), dtype=torch.float64, requires_grad=True)
            gathered = gather(x)
            weights = torch.arange(WORLD * 6, dtype=torch.float64).reshape(WORLD * 2, 3) * (rank + 1)
            (gathered * weights).sum().backward()
            results[f"{label}/value"] = gathered.detach()
            results[f"{label}/grad"] = x.grad
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        tdist.cleanup()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def single_process() -> dict[str, dict[str, torch.Tensor]]:
    """One process at the whole batch: no process group, so every gather is the identity."""
    assert tdist.get_world_size() == 1
    model = make_model()
    return losses_and_grads(model, model, global_batch(), 0, tdist.gather_with_grad)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("term", TERMS)
def test_global_grad_ddp_matches_single_process(ddp_results, single_process, term):
    reference = single_process[term]
    # Row-averaged terms average over processes; C-ITC is the same B x B loss on each.
    mean_loss = sum(r[f"global/{term}/loss"] for r in ddp_results) / WORLD
    torch.testing.assert_close(mean_loss, reference["loss"], rtol=1e-10, atol=1e-12)
    for name, ref_grad in reference.items():
        if name == "loss":
            continue
        for rank, result in enumerate(ddp_results):
            torch.testing.assert_close(
                result[f"global/{term}/{name}"], ref_grad, rtol=1e-9, atol=1e-12,
                msg=lambda m, name=name, rank=rank: f"{term} gradient of {name} on rank {rank}: {m}",
            )  # fmt: skip


@pytest.mark.timeout(120)
def test_all_reduce_mean_of_loss_is_single_process_loss(ddp_results, single_process):
    for result in ddp_results:
        torch.testing.assert_close(result["global/loss_mean"], single_process["total"]["loss"])


@pytest.mark.timeout(120)
def test_no_grad_gather_baseline_gives_different_gradients(ddp_results, single_process):
    reference = single_process["total"]
    # Same forward values, so the same loss ...
    mean_loss = sum(r["baseline/total/loss"] for r in ddp_results) / WORLD
    torch.testing.assert_close(mean_loss, reference["loss"])
    # ... but the cross-process gradient paths are missing.
    for name in ("image.weight", "text.weight", "head.0.weight"):
        diff = (ddp_results[0][f"baseline/total/{name}"] - reference[name]).abs().max().item()
        assert diff > 1e-4 * reference[name].abs().max().item(), name
    # the logit scale only enters the loss directly, so its gradient is the same in both
    torch.testing.assert_close(ddp_results[0]["baseline/total/theta"], reference["theta"])


@pytest.mark.timeout(120)
def test_every_loss_variant_under_global_grad_matches_one_process(ddp_results):
    single = objective_gradients(slice(None), 0, OBJECTIVE_LOSS)
    for rank, result in enumerate(ddp_results):
        for name, reference in single.items():
            torch.testing.assert_close(result[f"objective_global/{name}"], reference, rtol=1e-9, atol=1e-12,
                                       msg=lambda m, name=name, rank=rank: f"{name} on rank {rank}: {m}")


@pytest.mark.timeout(120)
def test_emulated_processes_give_the_gradients_of_real_processes_without_global_grad(ddp_results):
    """loss.emulated_processes on one process == that many gloo processes without GlobalGrad, and != GlobalGrad."""
    emulated = objective_gradients(
        slice(None), 0, dataclasses.replace(OBJECTIVE_LOSS, global_grad=False, emulated_processes=WORLD))
    single = objective_gradients(slice(None), 0, OBJECTIVE_LOSS)
    for rank, result in enumerate(ddp_results):
        for name, reference in emulated.items():
            torch.testing.assert_close(result[f"objective_baseline/{name}"], reference, rtol=1e-9, atol=1e-12,
                                       msg=lambda m, name=name, rank=rank: f"{name} on rank {rank}: {m}")
    torch.testing.assert_close(emulated["loss"], single["loss"])
    for name in ("image.weight", "text.weight", "image_head.0.weight", "text_head.0.weight"):
        diff = (emulated[name] - single[name]).abs().max().item()
        assert diff > 1e-4 * single[name].abs().max().item(), name


@pytest.mark.timeout(120)
def test_emulating_more_processes_than_run_is_the_same_on_one_or_two(ddp_results):
    """emulated_processes=4 on two real processes (2 virtual ranks each) == on one process (4 virtual ranks)."""
    four = dataclasses.replace(OBJECTIVE_LOSS, global_grad=False, emulated_processes=4)
    on_one = objective_gradients(slice(None), 0, four)
    two = objective_gradients(slice(None), 0, dataclasses.replace(four, emulated_processes=2))
    for rank, result in enumerate(ddp_results):
        for name, reference in on_one.items():
            torch.testing.assert_close(result[f"objective_emulating_4/{name}"], reference, rtol=1e-9, atol=1e-12,
                                       msg=lambda m, name=name, rank=rank: f"{name} on rank {rank}: {m}")
    assert (on_one["text.weight"] - two["text.weight"]).abs().max() > 1e-6  # 4 virtual ranks are not 2


@pytest.mark.timeout(120)
def test_gather_gradient_semantics(ddp_results):
    rows = 2
    weights = [
        torch.arange(WORLD * 6, dtype=torch.float64).reshape(WORLD * rows, 3) * (r + 1) for r in range(WORLD)
    ]
    expected_value = torch.cat(
        [torch.full((rows, 3), float(r + 1), dtype=torch.float64) for r in range(WORLD)]
    )
    for rank, result in enumerate(ddp_results):
        own = slice(rank * rows, (rank + 1) * rows)
        torch.testing.assert_close(result["gather_global/value"], expected_value)
        torch.testing.assert_close(result["gather_baseline/value"], expected_value)
        torch.testing.assert_close(result["gather_global/grad"], sum(w[own] for w in weights))
        torch.testing.assert_close(result["gather_baseline/grad"], weights[rank][own])


# ---------------------------------------------------------------- single process, no torchrun


def test_init_distributed_without_torchrun_is_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = tdist.init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.local_rank, info.device) == (0, 1, 0, torch.device("cpu"))
    assert not info.is_distributed and info.is_main and tdist.is_main()
    tdist.barrier()  # no-op without a process group
    x = torch.randn(3, 2, requires_grad=True)
    assert tdist.gather_with_grad(x) is x and tdist.gather_no_grad(x) is x
    torch.testing.assert_close(tdist.all_reduce_mean(x), x.detach())


def test_init_distributed_rejects_bad_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        tdist.init_distributed(device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ValueError, match="RANK, LOCAL_RANK unset"):
        tdist.init_distributed(device="cpu")


def test_local_batch_size_needs_a_global_batch_divisible_by_the_processes():
    assert tdist.local_batch_size(320, 4) == 80
    with pytest.raises(ValueError, match="not divisible"):
        tdist.local_batch_size(320, 3)
