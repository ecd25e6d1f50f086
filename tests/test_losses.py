"""Each loss against a slow, loop-by-loop evaluation of the formula in docs/method.md#losses (values and gradients).

The inputs simulate process ``RANK`` of ``P`` processes on one machine: the gathered tensors are
the full batch, the local tensors its rows g(i) = RANK·b + i, so indexing across "processes" is
exercised without a process group.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tbps.losses import (
    c_itc,
    c_itc_terms,
    clamped_logit_scale,
    clip_loss,
    combine_losses,
    diagonal_targets,
    identity_targets,
    n_itc,
    nt_xent,
    r_itc,
    soft_label_alpha,
    soft_targets,
)
from tbps.objective import embedding_names

P, B, DIM = 2, 8, 8
LOCAL_B = B // P
RANK = 1
ROWS = slice(RANK * LOCAL_B, (RANK + 1) * LOCAL_B)
# Repeats inside a process and across processes (id 5 sits in both halves).
IDS = torch.tensor([5, 2, 2, 7, 5, 9, 9, 9])
DT = torch.float64


def _leaves(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen, dtype=DT).requires_grad_() for shape in shapes]


def _grads(value: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(value, inputs, retain_graph=True)


def _hard(ids_local=IDS[ROWS], ids_all=IDS):
    """The hard identity targets q̂ of the simulated process (float64, as the features)."""
    return identity_targets(ids_local, ids_all, DT)


def _assert_close_with_grads(fast, slow, inputs):
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    for g_fast, g_slow in zip(_grads(fast, inputs), _grads(slow, inputs), strict=True):
        torch.testing.assert_close(g_fast, g_slow, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- slow references (explicit loops)


def slow_targets(ids_local, ids_all) -> list[list[float]]:
    rows = []
    for y_i in ids_local.tolist():
        denom = sum(1 for y_k in ids_all.tolist() if y_k == y_i)
        rows.append([(1.0 if y_j == y_i else 0.0) / denom for y_j in ids_all.tolist()])
    return rows


def slow_probs(queries, keys, s, i):
    """p_ij = exp(s·q_i·k_j) / Σ_k exp(s·q_i·k_k), one row, as a list of 0-d tensors."""
    numerators = [torch.exp(s * torch.dot(queries[i], keys[j])) for j in range(keys.shape[0])]
    denom = sum(numerators)
    return [n / denom for n in numerators]


def slow_n_itc(v_loc, t_loc, v_all, t_all, s, m_i2t, m_t2i):
    b, big_b = v_loc.shape[0], v_all.shape[0]
    ce = []
    for queries, keys, m in ((v_loc, t_all, m_i2t), (t_loc, v_all, m_t2i)):
        total = 0.0
        for i in range(b):
            p = slow_probs(queries, keys, s, i)
            for j in range(big_b):
                total = total - m[i][j] * torch.log(p[j])
        ce.append(total / b)
    return 0.5 * (ce[0] + ce[1])


def slow_r_itc(v_loc, t_loc, v_all, t_all, s, q, eps):
    b, big_b = v_loc.shape[0], v_all.shape[0]
    kl = []
    for queries, keys in ((v_loc, t_all), (t_loc, v_all)):
        total = 0.0
        for i in range(b):
            p = slow_probs(queries, keys, s, i)
            for j in range(big_b):
                total = total + p[j] * (torch.log(p[j]) - math.log(q[i][j] + eps))
        kl.append(total / b)
    return 0.5 * (kl[0] + kl[1])


def slow_c_itc(v_all, t_all):
    big_b = v_all.shape[0]
    c_inter = c_cross = 0.0
    for j in range(big_b):
        for k in range(big_b):
            c_inter = c_inter + (torch.dot(v_all[j], v_all[k]) - torch.dot(t_all[j], t_all[k])) ** 2
            c_cross = c_cross + (torch.dot(v_all[j], t_all[k]) - torch.dot(t_all[j], v_all[k])) ** 2
    return c_inter / big_b**2, c_cross / big_b**2


def slow_nt_xent(za_loc, zb_loc, za_all, zb_all, rank, tau):
    b, big_b = za_loc.shape[0], za_all.shape[0]
    sides = []
    for anchors, other_all, same_all in ((za_loc, zb_all, za_all), (zb_loc, za_all, zb_all)):
        total = 0.0
        for i in range(b):
            g = rank * b + i
            logits = [torch.dot(anchors[i], other_all[j]) / tau for j in range(big_b)]
            logits += [torch.dot(anchors[i], same_all[j]) / tau for j in range(big_b) if j != g]
            denom = sum(torch.exp(x) for x in logits)
            total = total - torch.log(torch.exp(logits[g]) / denom)
        sides.append(total / b)
    return 0.5 * (sides[0] + sides[1])


# ---------------------------------------------------------------- fixtures


@pytest.fixture()
def feats():
    """L2-normalised image/text features of the gathered batch, their raw leaves and θ."""
    raw_v, raw_t = _leaves(0, (B, DIM), (B, DIM))
    theta = torch.tensor(math.log(7.0), dtype=DT, requires_grad=True)
    v_all, t_all = F.normalize(raw_v, dim=1), F.normalize(raw_t, dim=1)
    return raw_v, raw_t, theta, v_all, t_all


# ---------------------------------------------------------------- targets


def test_identity_targets_spec_example():
    q = identity_targets(torch.tensor([7, 3, 7, 9]), torch.tensor([7, 3, 7, 9]))
    torch.testing.assert_close(q[0], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    torch.testing.assert_close(q[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(q.sum(dim=1), torch.ones(4))


def test_identity_targets_match_loops_for_local_rows():
    q = identity_targets(IDS[ROWS], IDS)
    assert q.shape == (LOCAL_B, B)
    torch.testing.assert_close(q, torch.tensor(slow_targets(IDS[ROWS], IDS), dtype=q.dtype))


def test_identity_targets_reject_local_id_missing_from_gathered():
    with pytest.raises(ValueError, match="does not occur"):
        identity_targets(torch.tensor([1, 42]), torch.tensor([1, 2, 3]))


def test_diagonal_targets_sit_at_global_index():
    q = diagonal_targets(LOCAL_B, B, RANK)
    assert q.sum().item() == LOCAL_B
    for i in range(LOCAL_B):
        assert q[i, RANK * LOCAL_B + i].item() == 1.0


def test_soft_targets_limits_and_mixture():
    hard = identity_targets(IDS[ROWS], IDS)
    logits = torch.randn(LOCAL_B, B, requires_grad=True)
    torch.testing.assert_close(soft_targets(hard, logits, 0.0), hard)
    torch.testing.assert_close(soft_targets(hard, logits, 1.0), logits.detach().softmax(dim=1))
    mixed = soft_targets(hard, logits, 0.3)
    assert not mixed.requires_grad
    torch.testing.assert_close(mixed, 0.3 * logits.detach().softmax(dim=1) + 0.7 * hard)
    torch.testing.assert_close(mixed.sum(dim=1), torch.ones(LOCAL_B))
    with pytest.raises(ValueError, match="alpha"):
        soft_targets(hard, logits, 1.5)


def test_soft_label_alpha_ramp():
    assert soft_label_alpha(0, 10, 0, alpha=0.5, ramp_epochs=1) == 0.0
    assert soft_label_alpha(5, 10, 0, alpha=0.5, ramp_epochs=1) == pytest.approx(0.25)
    assert soft_label_alpha(9, 10, 0, alpha=0.5, ramp_epochs=1) == pytest.approx(0.45)
    assert soft_label_alpha(0, 10, 1, alpha=0.5, ramp_epochs=1) == 0.5
    assert soft_label_alpha(5, 10, 1, alpha=0.5, ramp_epochs=2) == pytest.approx(0.5 * 15 / 20)
    assert soft_label_alpha(3, 10, 0, alpha=0.5, ramp_epochs=0) == 0.5


# ---------------------------------------------------------------- N-ITC / CLIP


def test_n_itc_hard_targets_match_loops(feats):
    raw_v, raw_t, theta, v_all, t_all = feats
    s = theta.exp()
    fast = n_itc(v_all[ROWS], t_all[ROWS], v_all, t_all, s, targets_i2t=_hard(), targets_t2i=_hard())
    q = slow_targets(IDS[ROWS], IDS)
    slow = slow_n_itc(v_all[ROWS], t_all[ROWS], v_all, t_all, s, q, q)
    _assert_close_with_grads(fast, slow, [raw_v, raw_t, theta])


def test_n_itc_soft_targets_match_loops(feats):
    raw_v, raw_t, theta, v_all, t_all = feats
    s = theta.exp()
    # Second "no-grad pass": slightly different features, as text dropout would give.
    noise_v, noise_t = _leaves(1, (B, DIM), (B, DIM))
    v2 = F.normalize(v_all.detach() + 0.1 * noise_v.detach(), dim=1)
    t2 = F.normalize(t_all.detach() + 0.1 * noise_t.detach(), dim=1)
    hard = _hard()
    m_i2t = soft_targets(hard, s.detach() * v2[ROWS] @ t2.t(), 0.4)
    m_t2i = soft_targets(hard, s.detach() * t2[ROWS] @ v2.t(), 0.4)
    fast = n_itc(v_all[ROWS], t_all[ROWS], v_all, t_all, s, targets_i2t=m_i2t, targets_t2i=m_t2i)

    # The spec's m, built entry by entry.
    def mix(queries, keys):
        rows = []
        for i in range(LOCAL_B):
            p = slow_probs(queries, keys, s.detach(), i)
            q = slow_targets(IDS[ROWS], IDS)[i]
            rows.append([0.4 * p[j].item() + 0.6 * q[j] for j in range(B)])
        return rows

    slow = slow_n_itc(v_all[ROWS], t_all[ROWS], v_all, t_all, s, mix(v2[ROWS], t2), mix(t2[ROWS], v2))
    _assert_close_with_grads(fast, slow, [raw_v, raw_t, theta])


def test_n_itc_with_unique_ids_equals_clip_loss(feats):
    raw_v, raw_t, theta, v_all, t_all = feats
    s = theta.exp()
    unique = torch.arange(100, 100 + B)
    q = _hard(unique[ROWS], unique)
    fast = n_itc(v_all[ROWS], t_all[ROWS], v_all, t_all, s, targets_i2t=q, targets_t2i=q)
    baseline = clip_loss(v_all[ROWS], t_all[ROWS], v_all, t_all, s, RANK)
    _assert_close_with_grads(fast, baseline, [raw_v, raw_t, theta])
    # and the CLIP loss is InfoNCE at the global index g(i), an independent formulation:
    target = torch.arange(RANK * LOCAL_B, (RANK + 1) * LOCAL_B)
    infonce = 0.5 * (
        F.cross_entropy(s * v_all[ROWS] @ t_all.t(), target)
        + F.cross_entropy(s * t_all[ROWS] @ v_all.t(), target)
    )
    torch.testing.assert_close(baseline, infonce)


def test_n_itc_repeated_ids_differ_from_clip_loss(feats):
    _, _, theta, v_all, t_all = feats
    s = theta.exp()
    with_ids = n_itc(v_all[ROWS], t_all[ROWS], v_all, t_all, s, targets_i2t=_hard(), targets_t2i=_hard())
    assert abs(with_ids.item() - clip_loss(v_all[ROWS], t_all[ROWS], v_all, t_all, s, RANK).item()) > 1e-3


# ---------------------------------------------------------------- R-ITC


def test_r_itc_matches_loops(feats):
    raw_v, raw_t, theta, v_all, t_all = feats
    s = theta.exp()
    fast = r_itc(v_all[ROWS], t_all[ROWS], v_all, t_all, s, targets=_hard(), eps=1e-2)
    slow = slow_r_itc(v_all[ROWS], t_all[ROWS], v_all, t_all, s, slow_targets(IDS[ROWS], IDS), 1e-2)
    _assert_close_with_grads(fast, slow, [raw_v, raw_t, theta])


def test_r_itc_targets_get_no_gradient_and_are_not_renormalised(feats):
    _, _, theta, v_all, t_all = feats
    s = theta.exp().detach()
    q = _hard().requires_grad_()
    value = r_itc(v_all[ROWS], t_all[ROWS], v_all, t_all, s, targets=q, eps=0.5)
    (grad_q,) = torch.autograd.grad(value, [q], allow_unused=True)
    assert grad_q is None
    # q̂ + ε with ε = 0.5 sums to 1 + 0.5·B per row; renormalising would shift the value by
    # exactly log(1 + 0.5·B) (Σ_j p_ij = 1), so the unnormalised form is pinned down.
    renormalised_log_q = torch.log((q.detach() + 0.5) / (q.detach() + 0.5).sum(dim=1, keepdim=True))
    log_p = (s * v_all[ROWS] @ t_all.t()).log_softmax(dim=1)
    kl_i2t_renorm = (log_p.exp() * (log_p - renormalised_log_q)).sum(dim=1).mean()
    log_p = (s * t_all[ROWS] @ v_all.t()).log_softmax(dim=1)
    kl_t2i_renorm = (log_p.exp() * (log_p - renormalised_log_q)).sum(dim=1).mean()
    torch.testing.assert_close(value, 0.5 * (kl_i2t_renorm + kl_t2i_renorm) - math.log(1 + 0.5 * B))


# ---------------------------------------------------------------- C-ITC


def test_c_itc_matches_loops(feats):
    raw_v, raw_t, _, v_all, t_all = feats
    c_inter, c_cross = c_itc_terms(v_all, t_all)
    slow_inter, slow_cross = slow_c_itc(v_all, t_all)
    _assert_close_with_grads(c_inter, slow_inter, [raw_v, raw_t])
    _assert_close_with_grads(c_cross, slow_cross, [raw_v, raw_t])
    _assert_close_with_grads(c_itc(v_all, t_all, term_weight=0.25), 0.25 * (slow_inter + slow_cross), [raw_v, raw_t])


def test_c_itc_is_zero_for_identical_modalities(feats):
    raw_v, _, _, v_all, _ = feats
    value = c_itc(v_all, v_all, term_weight=0.25)
    assert value.item() == pytest.approx(0.0, abs=1e-14)
    (grad,) = torch.autograd.grad(value, [raw_v])
    assert grad.abs().max().item() < 1e-12


# ---------------------------------------------------------------- SS-I


@pytest.mark.parametrize("rank", [0, 1])
def test_nt_xent_matches_loops(rank):
    raw_a, raw_b = _leaves(2, (B, DIM), (B, DIM))
    za, zb = F.normalize(raw_a, dim=1), F.normalize(raw_b, dim=1)
    rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    fast = nt_xent(za[rows], zb[rows], za, zb, rank, temperature=0.1)
    slow = slow_nt_xent(za[rows], zb[rows], za, zb, rank, 0.1)
    _assert_close_with_grads(fast, slow, [raw_a, raw_b])


def test_nt_xent_rejects_rank_outside_batch():
    za = F.normalize(torch.randn(B, DIM), dim=1)
    with pytest.raises(ValueError, match="does not fit"):
        nt_xent(za[:LOCAL_B], za[:LOCAL_B], za, za, rank=P, temperature=0.1)


# ---------------------------------------------------------------- logit scale


def test_clamped_logit_scale_below_clamp_is_exp():
    theta = torch.tensor(math.log(50.0), dtype=DT, requires_grad=True)
    s = clamped_logit_scale(theta)
    assert s.item() == pytest.approx(50.0)
    (grad,) = torch.autograd.grad(3.0 * s, [theta])
    assert grad.item() == pytest.approx(150.0)


def test_clamped_logit_scale_above_clamp_keeps_gradient(feats):
    _, _, _, v_all, t_all = feats
    v_all, t_all = v_all.detach(), t_all.detach()
    theta = torch.tensor(math.log(100.0) + 0.5, dtype=DT, requires_grad=True)
    s = clamped_logit_scale(theta, max_scale=100.0)
    assert s.item() == pytest.approx(100.0)

    def loss(scale):
        return n_itc(v_all[ROWS], t_all[ROWS], v_all, t_all, scale, targets_i2t=_hard(), targets_t2i=_hard())

    (grad_theta,) = torch.autograd.grad(loss(s), [theta])
    s_leaf = torch.tensor(100.0, dtype=DT, requires_grad=True)
    (dl_ds,) = torch.autograd.grad(loss(s_leaf), [s_leaf])
    # dL/dθ = s·∂L/∂s with s the value used (clamped at 100), as the official in-place clamp gives.
    assert dl_ds.abs().item() > 1e-6
    torch.testing.assert_close(grad_theta, 100.0 * dl_ds)
    # torch.clamp would have frozen θ:
    (frozen,) = torch.autograd.grad(loss(torch.clamp(theta.exp(), max=100.0)), [theta])
    assert frozen.item() == 0.0


# ---------------------------------------------------------------- combiner


def test_combine_losses_full_and_simplified():
    n1, n2, r, ss, c = (torch.tensor(x) for x in (2.0, 4.0, 0.5, 3.0, 0.2))
    full = {"mvs_mode": "average", "r_weight": 1.0, "ss_i_weight": 0.4, "ss_t_weight": 0.0, "c_weight": 0.1}
    total, logged = combine_losses(n1, n_itc_mvs=n2, r_itc=r, ss_i=ss, c_itc=c, **full)
    assert total.item() == pytest.approx(0.5 * (2 + 4) + 0.5 + 0.4 * 3 + 0.1 * 0.2)
    assert set(logged) == {"n_itc", "n_itc_mvs", "r_itc", "ss_i", "c_itc", "total"}
    total_add, _ = combine_losses(n1, n_itc_mvs=n2, **{**full, "mvs_mode": "add"})
    assert total_add.item() == pytest.approx(6.0)
    simplified, logged = combine_losses(n1, r_itc=r, ss_i=ss, **{**full, "ss_i_weight": 0.0})
    assert simplified.item() == pytest.approx(2.5)
    assert set(logged) == {"n_itc", "r_itc", "total"}
    with pytest.raises(ValueError, match="mvs_mode"):
        combine_losses(n1, **{**full, "mvs_mode": "mean"})


def test_losses_return_fp32_under_autocast():
    """Half-precision matmuls under AMP must not leak into the loss values (C-ITC runs in fp32)."""
    gen = torch.Generator().manual_seed(3)
    v = F.normalize(torch.randn(B, DIM, generator=gen), dim=1)
    t = F.normalize(v + 0.01 * torch.randn(B, DIM, generator=gen), dim=1)  # nearly aligned: C-ITC tiny
    s = torch.tensor(100.0)
    hard = identity_targets(IDS[ROWS], IDS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = {
            "n_itc": n_itc(v[ROWS], t[ROWS], v, t, s, targets_i2t=hard, targets_t2i=hard),
            "r_itc": r_itc(v[ROWS], t[ROWS], v, t, s, targets=hard, eps=1e-2),
            "c_itc": c_itc(v, t, term_weight=0.25),
            "ss_i": nt_xent(v[ROWS], t[ROWS], v, t, RANK, temperature=0.1),
            "clip": clip_loss(v[ROWS], t[ROWS], v, t, s, RANK),
        }
    for name, value in values.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    torch.testing.assert_close(values["c_itc"], c_itc(v, t, term_weight=0.25), rtol=1e-5, atol=0.0)


# ---------------------------------------------------------------- loss variants through the objective

NAMES = ("image", "text", "image_mvs", "text_mvs", "simclr_a", "simclr_b", "text_ss_a", "text_ss_b")
ALPHA = 0.4


@pytest.fixture()
def step_inputs():
    """Raw leaves, L2-normalised embeddings of every view (all B rows), the no-grad pass, θ."""
    raws = _leaves(5, *[(B, DIM)] * len(NAMES))
    emb = {name: F.normalize(raw, dim=1) for name, raw in zip(NAMES, raws, strict=True)}
    noise = _leaves(6, *[(B, DIM)] * 4)
    nograd = {name: F.normalize(emb[name].detach() + 0.1 * n.detach(), dim=1)
              for name, n in zip(("image", "text", "image_mvs", "text_mvs"), noise, strict=True)}
    theta = torch.tensor(math.log(7.0), dtype=DT, requires_grad=True)
    return raws, emb, nograd, theta


def _variant(**loss):
    """LossConfig of CLIP*+Aug+N-ITC (identity targets, soft labels, no other term) plus ``loss``."""
    from tbps.config import LossConfig

    base = dict(identity_targets=True, soft_label_alpha=0.5, mvs_i=False, r_itc_weight=0.0, c_itc_weight=0.0,
                ss_i_weight=0.0, global_grad=True)
    return LossConfig(**{**base, **loss})


def slow_step_total(cfg, emb, nograd, s, rows, rank, columns):
    """The loss of the process holding ``rows``, term by term from the loops above.

    ``columns(name)`` is the gathered batch as that process sees it (for the non-GlobalGrad
    emulation: other processes' rows as constants)."""
    ids_local = IDS[rows]
    hard = slow_targets(ids_local, IDS)

    def mix(queries, keys):
        out = []
        for i in range(queries.shape[0]):
            p = slow_probs(queries, keys, s.detach(), i)
            out.append([ALPHA * p[j].item() + (1 - ALPHA) * hard[i][j] for j in range(B)])
        return out

    def n_itc_on(img, txt):
        return slow_n_itc(emb[img][rows], emb[txt][rows], columns(img), columns(txt), s,
                          mix(nograd[img][rows], nograd[txt]), mix(nograd[txt][rows], nograd[img]))

    views = [("image", "text")]
    views += [("image_mvs", "text")] if cfg.mvs_i else []
    views += [("image", "text_mvs")] if cfg.mvs_t else []
    views += [("image_mvs", "text_mvs")] if cfg.mvs_it else []
    n_terms = [n_itc_on(*v) for v in views]
    total = sum(n_terms[1:], n_terms[0])
    if cfg.mvs_mode == "average":
        total = total / len(n_terms)
    if cfg.r_itc_weight:
        total = total + cfg.r_itc_weight * slow_r_itc(emb["image"][rows], emb["text"][rows], columns("image"),
                                                      columns("text"), s, hard, cfg.r_itc_eps)
    if cfg.c_itc_weight:
        c_inter, c_cross = slow_c_itc(columns("image"), columns("text"))
        total = total + cfg.c_itc_weight * cfg.c_itc_term_weight * (c_inter + c_cross)
    for weight, tau, a, b in ((cfg.ss_i_weight, cfg.ss_i_temperature, "simclr_a", "simclr_b"),
                              (cfg.ss_t_weight, cfg.ss_t_temperature, "text_ss_a", "text_ss_b")):
        if weight:
            total = total + weight * slow_nt_xent(emb[a][rows], emb[b][rows], columns(a), columns(b), rank, tau)
    return total


def _assert_close_with_used_grads(fast, slow, inputs):
    """Values and gradients agree; an input a variant does not use gets no gradient from either."""
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    g_fast = torch.autograd.grad(fast, inputs, retain_graph=True, allow_unused=True)
    g_slow = torch.autograd.grad(slow, inputs, retain_graph=True, allow_unused=True)
    for a, b in zip(g_fast, g_slow, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    return g_fast


def _step(cfg, emb, nograd, theta):
    from tbps.objective import step_loss

    return step_loss(emb, IDS, theta.exp(), cfg, alpha=ALPHA, rank=0, nograd=nograd)


VARIANTS = {
    "N-ITC": {},
    "SS-I": {"ss_i_weight": 0.4},
    "SS-T": {"ss_t_weight": 0.4},
    "SS-IT": {"ss_i_weight": 0.4, "ss_t_weight": 0.4},
    "MVS-I": {"mvs_i": True},
    "MVS-T": {"mvs_t": True},
    "MVS-IT": {"mvs_it": True},
    "MVS-I+T+IT add": {"mvs_i": True, "mvs_t": True, "mvs_it": True, "mvs_mode": "add"},
    "all": {"mvs_i": True, "mvs_t": True, "mvs_it": True, "ss_i_weight": 0.4, "ss_t_weight": 0.4,
            "r_itc_weight": 1.0, "c_itc_weight": 0.1},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_loss_variant_matches_loops(step_inputs, variant):
    raws, emb, nograd, theta = step_inputs
    cfg = _variant(**VARIANTS[variant])
    fast, logged = _step(cfg, emb, nograd, theta)
    slow = slow_step_total(cfg, emb, nograd, theta.exp(), slice(None), 0, lambda name: emb[name])
    grads = _assert_close_with_used_grads(fast, slow, [*raws, theta])
    used = {name for name, g in zip(NAMES, grads, strict=False) if g is not None}
    assert used == set(embedding_names(cfg))
    on = {"n_itc_mvs": cfg.mvs_i, "n_itc_mvs_t": cfg.mvs_t, "n_itc_mvs_it": cfg.mvs_it, "ss_i": cfg.uses_ss_i,
          "ss_t": cfg.uses_ss_t, "r_itc": cfg.r_itc_weight > 0, "c_itc": cfg.c_itc_weight > 0}
    assert set(logged) == {"n_itc", "total"} | {term for term, used_ in on.items() if used_}


def test_mvs_t_uses_the_second_caption_view_with_its_own_soft_targets(step_inputs):
    _, emb, nograd, theta = step_inputs
    cfg = _variant(mvs_t=True)
    total, logged = _step(cfg, emb, nograd, theta)
    s = theta.exp()
    hard = _hard(IDS, IDS)
    v, tm, v_ng, tm_ng = emb["image"], emb["text_mvs"], nograd["image"], nograd["text_mvs"]
    mvs_t = n_itc(v, tm, v, tm, s, targets_i2t=soft_targets(hard, s.detach() * v_ng @ tm_ng.t(), ALPHA),
                  targets_t2i=soft_targets(hard, s.detach() * tm_ng @ v_ng.t(), ALPHA))
    torch.testing.assert_close(logged["n_itc_mvs_t"], mvs_t.detach())
    torch.testing.assert_close(total, 0.5 * (logged["n_itc"] + mvs_t))
    # Without soft labels the targets are the hard ones.
    _, hard_logged = _step(_variant(mvs_t=True, soft_label_alpha=0.0), emb, None, theta)
    torch.testing.assert_close(hard_logged["n_itc_mvs_t"],
                               n_itc(v, tm, v, tm, s, targets_i2t=hard, targets_t2i=hard).detach())


@pytest.mark.parametrize("variant", ["N-ITC", "all"])
def test_emulated_processes_match_the_per_process_loops_without_global_grad(step_inputs, variant):
    raws, emb, nograd, theta = step_inputs
    cfg = _variant(**VARIANTS[variant], global_grad=False, emulated_processes=P)
    fast, _ = _step(cfg, emb, nograd, theta)

    def per_process(rank):
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)

        def columns(name):  # what gather_no_grad returns on process `rank`: other rows are constants
            return torch.stack([emb[name][j] if rows.start <= j < rows.stop else emb[name][j].detach()
                                for j in range(B)])

        return slow_step_total(cfg, emb, nograd, theta.exp(), rows, rank, columns)

    slow = sum(per_process(rank) for rank in range(P)) / P
    _assert_close_with_used_grads(fast, slow, [*raws, theta])
    # Same value as one device at B (or GlobalGrad), other gradients.
    one_device, _ = _step(_variant(**VARIANTS[variant]), emb, nograd, theta)
    torch.testing.assert_close(fast, one_device)
    g_emulated = _grads(fast, raws[:2])
    g_global = _grads(one_device, raws[:2])
    assert all((a - b).abs().max() > 1e-6 for a, b in zip(g_emulated, g_global, strict=True))


def test_one_emulated_process_is_the_plain_loss(step_inputs):
    _, emb, nograd, theta = step_inputs
    plain, _ = _step(_variant(global_grad=False), emb, nograd, theta)
    one, _ = _step(_variant(global_grad=False, emulated_processes=1), emb, nograd, theta)
    assert torch.equal(plain, one)


def test_emulation_refuses_global_grad_and_uneven_batches(step_inputs):
    from tbps.errors import UserInputError
    from tbps.objective import check_process_emulation

    _, emb, nograd, theta = step_inputs
    with pytest.raises(ValueError, match="global_grad false"):
        _step(_variant(emulated_processes=2), emb, nograd, theta)
    with pytest.raises(UserInputError, match="loss.global_grad: false"):
        check_process_emulation(_variant(emulated_processes=4), world_size=1, global_batch=320)
    with pytest.raises(UserInputError, match="not divisible"):
        check_process_emulation(_variant(global_grad=False, emulated_processes=3), world_size=1, global_batch=320)
    with pytest.raises(UserInputError, match="not a multiple of the 3 real processes"):
        check_process_emulation(_variant(global_grad=False, emulated_processes=4), world_size=3, global_batch=320)
    for world in (1, 2, 4):
        check_process_emulation(_variant(global_grad=False, emulated_processes=4), world_size=world, global_batch=320)


def test_combine_losses_averages_every_view_present():
    n1, n2, n3, n4, ss_t = (torch.tensor(x) for x in (2.0, 4.0, 6.0, 12.0, 3.0))
    weights = {"r_weight": 1.0, "ss_i_weight": 0.4, "ss_t_weight": 0.4, "c_weight": 0.1}
    total, logged = combine_losses(n1, n_itc_mvs_t=n3, ss_t=ss_t, mvs_mode="average", **weights)
    assert total.item() == pytest.approx(0.5 * (2 + 6) + 0.4 * 3)
    assert set(logged) == {"n_itc", "n_itc_mvs_t", "ss_t", "total"}
    total, _ = combine_losses(n1, n_itc_mvs=n2, n_itc_mvs_t=n3, n_itc_mvs_it=n4, mvs_mode="average", **weights)
    assert total.item() == pytest.approx((2 + 4 + 6 + 12) / 4)
    total, _ = combine_losses(n1, n_itc_mvs=n2, n_itc_mvs_it=n4, mvs_mode="add", **weights)
    assert total.item() == pytest.approx(2 + 4 + 12)
    total, logged = combine_losses(n1, ss_t=ss_t, mvs_mode="average", **{**weights, "ss_t_weight": 0.0})
    assert total.item() == 2.0 and "ss_t" not in logged
