"""S seeds of one model trained side by side: (S, B, 1, H, W) images -> (S, B, K) logits.

Two layouts, one interface. `SeedStack` holds one module per seed and runs them one
after another: any nn.Module works, each seed's arithmetic is exactly its own. On two
CPU cores a 3x3 conv per seed is faster than one grouped conv over all seeds (0.69 vs
1.15 s per seed-epoch for the CNN at 28 px; see docs/performance.md). `StackedMLP`
puts an MLP's weights of all seeds into batched tensors: per-operation overhead, not
arithmetic, bounds a 128-wide MLP, and one bmm over five seeds costs little more
than one mm. Both draw each seed's dropout masks from that seed's own random stream.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from pneumolab.models.mlp import MLP

# Elements per padded block of a stacked parameter: a multiple of every CPU vector width.
FLAT_ALIGN = 64


class SeedRandomness:
    """Each seed's own state of the global generator, which nn.Dropout draws from.

    Swapped in around a seed's forward, so its masks never depend on the seeds beside it.
    """

    def __init__(self, seeds: list[int], cpu_states: list[torch.Tensor], device: torch.device):
        self.cpu_states = list(cpu_states)
        self.device = device
        # On a GPU dropout draws from the device's generator: one stream per seed there too.
        self.cuda_states = ([torch.Generator(device).manual_seed(seed).get_state() for seed in seeds]
                            if device.type == "cuda" else None)

    @contextmanager
    def of_seed(self, s: int) -> Iterator[None]:
        torch.set_rng_state(self.cpu_states[s])
        if self.cuda_states is not None:
            torch.cuda.set_rng_state(self.cuda_states[s], self.device)
        try:
            yield
        finally:
            self.cpu_states[s] = torch.get_rng_state()
            if self.cuda_states is not None:
                self.cuda_states[s] = torch.cuda.get_rng_state(self.device)


class SeedStack(nn.Module):
    """One module per seed, run in turn."""

    def __init__(self, modules: list[nn.Module], randomness: SeedRandomness):
        super().__init__()
        self.seeds = nn.ModuleList(modules)
        self.randomness = randomness

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def seed_parameters(self, s: int) -> list[nn.Parameter]:
        return list(self.seeds[s].parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for s, module in enumerate(self.seeds):
            with self.randomness.of_seed(s):
                outputs.append(module(x[s]))
        return torch.stack(outputs)

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        """The same images x (N, 1, H, W) through every seed: (S, N, K)."""
        return torch.stack([module(x) for module in self.seeds])

    def seed_state(self, s: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.seeds[s].state_dict().items()}

    def load_seed_state(self, s: int, state: dict[str, torch.Tensor]) -> None:
        self.seeds[s].load_state_dict(state)


class StackedMLP(nn.Module):
    """S MLPs in batched tensors: layer l's weight is (S, in, out) and its bias (S, 1, out).

    Each is a parameter of shape (S, n) with every seed's n values padded to whole
    64-element blocks (the padding stays zero), and a one-logit output layer is stored
    two columns wide (the second stays zero). Vector kernels round a tensor's ragged
    tail differently from its body, and bmm takes another path for a stack of ten or
    more matrices of width one; either would make a seed's numbers depend on how many
    seeds share the stack. With both, they do not, to the last bit (tests/test_train.py).
    """

    def __init__(self, mlps: list[MLP], randomness: SeedRandomness):
        super().__init__()
        self.n_outputs = mlps[0].linears[-1].out_features
        self.negative_slope = mlps[0].activation.negative_slope
        self.dropout_p = mlps[0].dropout.p
        self.randomness = randomness
        layers = [[m.linears[i] for m in mlps] for i in range(len(mlps[0].linears))]
        widths = [layer[0].out_features for layer in layers]
        widths[-1] = max(widths[-1], 2)
        self.weight_shapes = [(layer[0].in_features, w) for layer, w in zip(layers, widths)]
        self.weights = nn.ParameterList(padded_stack(len(mlps), math.prod(shape)) for shape in self.weight_shapes)
        self.biases = nn.ParameterList(padded_stack(len(mlps), w) for w in widths)
        with torch.no_grad():
            for weight, bias, layer in zip(*self.layers(), layers):
                for s, linear in enumerate(layer):
                    weight[s, :, : linear.out_features].copy_(linear.weight.T)
                    bias[s, 0, : linear.out_features].copy_(linear.bias)

    @property
    def n_seeds(self) -> int:
        return self.weights[0].shape[0]

    def layers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The weights (S, in, out) and biases (S, 1, out), as views of the padded parameters."""
        weights = [unpadded(p, (p.shape[0], *shape)) for p, shape in zip(self.weights, self.weight_shapes)]
        biases = [unpadded(p, (p.shape[0], 1, shape[1])) for p, shape in zip(self.biases, self.weight_shapes)]
        return weights, biases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, biases = self.layers()
        h = x.flatten(2)
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(weights) - 1:
                h = F.leaky_relu(h, self.negative_slope)
                if self.training and self.dropout_p > 0:
                    h = h * self.dropout_masks(h.shape)
        return h[..., : self.n_outputs]

    def dropout_masks(self, shape: torch.Size) -> torch.Tensor:
        """Seed s's mask is the one nn.Dropout would draw from seed s's stream for its (B, H) activations."""
        masks = []
        for s in range(shape[0]):
            with self.randomness.of_seed(s):
                masks.append(torch.empty(shape[1:], device=self.weights[0].device).bernoulli_(1 - self.dropout_p))
        return torch.stack(masks).div_(1 - self.dropout_p)

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        """The same images x (N, 1, H, W) through every seed: (S, N, K)."""
        weights, biases = self.layers()
        x = x.flatten(1)
        # The first layer seed by seed: a batched matmul would first copy x once per seed.
        h = torch.stack([torch.addmm(biases[0][s], x, weights[0][s]) for s in range(self.n_seeds)])
        for w, b in zip(weights[1:], biases[1:]):
            h = torch.baddbmm(b, F.leaky_relu(h, self.negative_slope), w)
        return h[..., : self.n_outputs]

    def seed_state(self, s: int) -> dict[str, torch.Tensor]:
        """Seed s's weights as an `MLP` state dict."""
        weights, biases = self.layers()
        state = {}
        for i, (w, b) in enumerate(zip(weights, biases)):
            width = self.n_outputs if i == len(weights) - 1 else w.shape[2]
            state[f"linears.{i}.weight"] = w[s, :, :width].T.detach().clone()
            state[f"linears.{i}.bias"] = b[s, 0, :width].detach().clone()
        return state

    def load_seed_state(self, s: int, state: dict[str, torch.Tensor]) -> None:
        weights, biases = self.layers()
        with torch.no_grad():
            for i, (w, b) in enumerate(zip(weights, biases)):
                weight = state[f"linears.{i}.weight"]
                w[s, :, : weight.shape[0]].copy_(weight.T)
                b[s, 0, : weight.shape[0]].copy_(state[f"linears.{i}.bias"])


def padded_stack(n_seeds: int, size: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(n_seeds, -(-size // FLAT_ALIGN) * FLAT_ALIGN))


def unpadded(param: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    size = math.prod(shape[1:])
    # A whole parameter is viewed as is: slicing it would cost a copy in every backward pass.
    return (param if size == param.shape[1] else param[:, :size]).view(shape)
