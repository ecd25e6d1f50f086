"""Exact big batches on one device by gradient caching.

Contrastive losses need every negative of the step at once, so gradient
accumulation over micro-batches is not equivalent (spec §6). Gradient caching
is: embed the batch chunk by chunk without graphs, compute the loss on the
full batch of embeddings (as detached leaves), backpropagate it to the
embeddings only, then re-embed each chunk with a graph and push the cached
embedding gradients through it. Peak activation memory is that of one chunk.

The re-forward must see exactly the random state of the first pass (text
attention dropout masks), so the RNG state is captured before each chunk and
replayed inside ``torch.random.fork_rng``, which leaves the global stream as
the first pass left it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor

Encode = Callable[[str, Tensor], Tensor]
LossFn = Callable[[dict[str, Tensor]], tuple[Tensor, dict]]


class RandomState:
    """The CPU (and current CUDA device's) RNG state at one moment, replayable later."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type if devices else "cuda"):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def _chunks(x: Tensor, size: int) -> list[Tensor]:
    return list(torch.split(x, size, dim=0))


def grad_cached_backward(
    encode: Encode,
    inputs: Mapping[str, Tensor],
    loss_fn: LossFn,
    chunk_size: int,
    *,
    scale_loss: Callable[[Tensor], Tensor] = lambda loss: loss,
    rng_device: torch.device | None = None,
) -> tuple[Tensor, dict]:
    """Compute ``loss_fn({name: encode(name, x)})`` and backpropagate it into the encoders.

    ``inputs`` maps a name (e.g. ``"image"``, ``"text"``) to a batch tensor; ``encode(name, x)``
    embeds a (chunk of a) batch with gradients. With ``chunk_size <= 0`` or at least the batch
    size this is a plain forward/backward; otherwise the gradient-cache procedure above, which
    gives the same parameter gradients with the memory of one chunk. ``scale_loss`` applies
    e.g. a GradScaler before the backward. ``rng_device`` is the device the encoders run on (whose
    random state is replayed); by default the inputs' device, which is wrong when ``encode`` moves
    CPU inputs to a GPU. Returns the (unscaled) loss, detached, and the loss function's log dict.
    """
    batch = next(iter(inputs.values())).shape[0]
    if chunk_size <= 0 or chunk_size >= batch:
        embeddings = {name: encode(name, x) for name, x in inputs.items()}
        loss, logs = loss_fn(embeddings)
        scale_loss(loss).backward()
        return loss.detach(), logs

    # Pass 1: embeddings without graphs, remembering each chunk's random state.
    leaves: dict[str, Tensor] = {}
    states: dict[str, list[RandomState]] = {}
    for name, x in inputs.items():
        parts, chunk_states = [], []
        for chunk in _chunks(x, chunk_size):
            chunk_states.append(RandomState(rng_device or chunk.device))
            with torch.no_grad():
                parts.append(encode(name, chunk))
        leaves[name] = torch.cat(parts).detach().requires_grad_(True)
        states[name] = chunk_states

    # The loss over the whole batch; its backward stops at the embedding leaves (and reaches
    # parameters the loss uses directly, such as the logit scale).
    loss, logs = loss_fn(leaves)
    scale_loss(loss).backward()

    # Pass 2: re-embed each chunk with a graph under the same random state; push the cached grads.
    for name, x in inputs.items():
        grads = leaves[name].grad
        if grads is None:  # the loss did not use this input
            continue
        for chunk, state, grad in zip(_chunks(x, chunk_size), states[name], _chunks(grads, chunk_size)):
            with state.replay():
                embedding = encode(name, chunk)
            embedding.backward(grad)
    return loss.detach(), logs
