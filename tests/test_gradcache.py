"""Gradient caching gives the gradients of one big batch, dropout included."""

import torch
import torch.nn.functional as F
from torch import nn

from tbps.gradcache import grad_cached_backward


class TwoTower(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 8))
        self.text = nn.Sequential(nn.Linear(10, 16), nn.Dropout(dropout), nn.GELU(), nn.Linear(16, 8))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def encode(self, name, x):
        tower = self.image if name in ("image", "image_mvs") else self.text
        return F.normalize(tower(x), dim=-1)


def contrastive_loss(model):
    def loss_fn(emb):
        scale = model.logit_scale.exp()
        logits = scale * emb["image"] @ emb["text"].t()
        target = torch.arange(logits.shape[0])
        loss = F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
        # a term coupling a second image view to the text, like MVS-I
        loss = loss + F.cross_entropy(scale * emb["image_mvs"] @ emb["text"].t(), target)
        return loss, {"n": logits.shape[0]}

    return loss_fn


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def batch(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 12, generator=g),
        "image_mvs": torch.randn(n, 12, generator=g),
        "text": torch.randn(n, 10, generator=g),
    }


def test_chunked_equals_unchunked_without_dropout():
    torch.manual_seed(0)
    model = TwoTower(dropout=0.0)
    inputs = batch()
    loss_full, _ = grad_cached_backward(model.encode, inputs, contrastive_loss(model), chunk_size=0)
    full = grads(model)
    model.zero_grad()
    loss_chunked, _ = grad_cached_backward(model.encode, inputs, contrastive_loss(model), chunk_size=5)
    assert torch.allclose(loss_full, loss_chunked, atol=1e-6)
    for name, g in grads(model).items():
        torch.testing.assert_close(g, full[name], atol=1e-6, rtol=1e-5, msg=name)


def test_chunked_replays_dropout_masks():
    """With dropout on, the re-forward must reuse the first pass's masks: compare against one graph
    over the same chunks drawn in the same order (so the masks are identical by construction)."""
    model = TwoTower(dropout=0.3)
    model.train()
    inputs = batch()
    chunk = 7

    torch.manual_seed(123)
    embeddings = {name: torch.cat([model.encode(name, c) for c in torch.split(x, chunk)]) for name, x in inputs.items()}
    loss_ref, _ = contrastive_loss(model)(embeddings)
    loss_ref.backward()
    reference = grads(model)
    model.zero_grad()

    torch.manual_seed(123)
    loss, _ = grad_cached_backward(model.encode, inputs, contrastive_loss(model), chunk_size=chunk)
    assert torch.allclose(loss, loss_ref.detach(), atol=1e-6)
    for name, g in grads(model).items():
        torch.testing.assert_close(g, reference[name], atol=1e-6, rtol=1e-5, msg=name)


def test_without_replay_the_gradients_would_differ():
    """Guards the test above: fresh masks in the re-forward give different gradients."""
    model = TwoTower(dropout=0.3)
    inputs = batch()
    torch.manual_seed(123)
    grad_cached_backward(model.encode, inputs, contrastive_loss(model), chunk_size=7)
    replayed = grads(model)["text.0.weight"]
    model.zero_grad()

    from tbps import gradcache

    class NoReplay(gradcache.RandomState):
        def replay(self):
            import contextlib

            return contextlib.nullcontext()

    original = gradcache.RandomState
    gradcache.RandomState = NoReplay
    try:
        torch.manual_seed(123)
        grad_cached_backward(model.encode, inputs, contrastive_loss(model), chunk_size=7)
    finally:
        gradcache.RandomState = original
    assert not torch.allclose(grads(model)["text.0.weight"], replayed, atol=1e-4)


def test_global_rng_stream_is_not_disturbed_by_replay():
    model = TwoTower(dropout=0.3)
    inputs = batch()
    torch.manual_seed(5)
    grad_cached_backward(model.encode, inputs, contrastive_loss(model), chunk_size=6)
    after_chunked = torch.rand(3)
    torch.manual_seed(5)
    # The first pass alone consumes the same draws as the chunked step.
    with torch.no_grad():
        for name, x in inputs.items():
            for c in torch.split(x, 6):
                model.encode(name, c)
    assert torch.equal(after_chunked, torch.rand(3))


class HeadedTwoTower(nn.Module):
    """The tower methods tbps.objective.ENCODERS names (no dropout: the replay of its masks is tested above,
    and one batch draws other masks than its chunks)."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 8))
        self.text = nn.Sequential(nn.Linear(10, 16), nn.GELU(), nn.Linear(16, 8))
        self.image_head = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8))
        self.text_head = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def encode_image(self, x):
        return F.normalize(self.image(x), dim=-1)

    def encode_text(self, x):
        return F.normalize(self.text(x), dim=-1)

    def simclr(self, x):
        return F.normalize(self.image_head(self.image(x)), dim=-1)

    def text_simclr(self, x):
        return F.normalize(self.text_head(self.text(x)), dim=-1)


def test_chunked_equals_unchunked_for_every_loss_variant():
    """SS-T, MVS-T, MVS-IT (with SS-I, MVS-I, R-ITC, C-ITC and soft labels), with GlobalGrad and with
    emulated processes: gradient caching gives the one-batch gradients."""
    from tbps.config import LossConfig
    from tbps.objective import ENCODERS, batch_inputs, nograd_pass, step_loss

    model = HeadedTwoTower()

    def encode(name, x):
        return getattr(model, ENCODERS[name])(x)

    g = torch.Generator().manual_seed(4)
    shapes = {"image": 12, "image_mvs": 12, "simclr_a": 12, "simclr_b": 12,
              "tokens": 10, "tokens_mvs": 10, "tokens_ss_a": 10, "tokens_ss_b": 10}
    batch = {key: torch.randn(24, dim, generator=g) for key, dim in shapes.items()}
    ids = torch.tensor([i % 9 for i in range(24)])
    for loss_cfg in (
        LossConfig(mvs_t=True, mvs_it=True, ss_t_weight=0.4),
        LossConfig(mvs_t=True, mvs_it=True, ss_t_weight=0.4, global_grad=False, emulated_processes=4),
    ):
        inputs = batch_inputs(batch, loss_cfg)
        assert set(inputs) == set(ENCODERS)
        results = []
        for chunk in (0, 5):
            model.zero_grad()
            torch.manual_seed(7)
            nograd = nograd_pass(encode, inputs, chunk)
            assert set(nograd) == {"image", "text", "image_mvs", "text_mvs"}

            def loss_fn(emb, nograd=nograd, loss_cfg=loss_cfg):
                return step_loss(emb, ids, model.logit_scale.exp(), loss_cfg, alpha=0.3, rank=0, nograd=nograd)

            loss, terms = grad_cached_backward(encode, inputs, loss_fn, chunk_size=chunk)
            assert {"n_itc_mvs_t", "n_itc_mvs_it", "ss_t"} <= set(terms)
            results.append((loss, grads(model)))
        (loss_full, full), (loss_chunked, chunked) = results
        torch.testing.assert_close(loss_chunked, loss_full, atol=1e-6, rtol=1e-5)
        for name, grad in chunked.items():
            torch.testing.assert_close(grad, full[name], atol=1e-6, rtol=1e-5, msg=name)
