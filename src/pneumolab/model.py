"""The MLP, in two layouts that compute the same function.

`MLP` is the plain `nn.Module` (flatten -> [Linear, LeakyReLU, Dropout] x n -> Linear),
trained one seed at a time with autograd. `StackedMLP` holds the weights of S
seeds in stacked tensors and runs forward and backward for all of them in one
set of batched matmuls, with the gradients written by hand: on two CPU cores,
per-operation overhead, not arithmetic, is what limits a 128-wide MLP, and one
`bmm` over five seeds costs little more than one `mm`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pneumolab.config import MLPConfig

# Elements per padded block of the parameter buffer: a multiple of every CPU vector width.
FLAT_ALIGN = 64


def init_linear(layer: nn.Linear, generator: torch.Generator) -> None:
    """`nn.Linear`'s default initialisation, drawn from an explicit generator."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(layer.in_features)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig, in_features: int, out_features: int, generator: torch.Generator):
        super().__init__()
        sizes = [in_features, *cfg.hidden_sizes, out_features]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.negative_slope = cfg.negative_slope
        self.dropout = cfg.dropout
        for layer in self.linears:
            init_linear(layer, generator)

    def forward(self, x: torch.Tensor, dropout_generator: torch.Generator | None = None) -> torch.Tensor:
        h = x.flatten(1)
        for i, layer in enumerate(self.linears):
            h = layer(h)
            if i < len(self.linears) - 1:
                h = nn.functional.leaky_relu(h, self.negative_slope)
                if self.training and self.dropout > 0:
                    h = h * dropout_mask(h.shape, self.dropout, dropout_generator, h.device)
        return h


def dropout_mask(shape: torch.Size, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Inverted-dropout mask drawn from the seed's own generator (nn.Dropout would use the global one)."""
    keep = torch.rand(shape, generator=generator, device=generator.device if generator else device) >= p
    return keep.to(device=device, dtype=torch.float32).div_(1.0 - p)


class StackedMLP:
    """S independent MLPs: weight l is (S, in, out), bias l is (S, 1, out).

    Built from S `MLP`s so both layouts start from identical weights. One optimizer
    steps `parameters()`; where seeds need their own optimizers, `seed_parameters(s)`
    gives views of seed s's slices whose `.grad` are views into the gradient buffer.
    """

    def __init__(self, mlps: list[MLP], device: torch.device):
        self.negative_slope = mlps[0].negative_slope
        self.dropout = mlps[0].dropout
        self.training = True
        layers = [[m.linears[l] for m in mlps] for l in range(len(mlps[0].linears))]
        n_seeds = len(mlps)
        shapes = [(n_seeds, layer[0].in_features, layer[0].out_features) for layer in layers]
        shapes += [(n_seeds, 1, layer[0].out_features) for layer in layers]
        # Every tensor lives in one flat buffer (and its gradient in another), so the optimizer
        # steps a single tensor: its per-tensor Python work is a large part of a small step.
        # The buffer is padded (with zeros that stay zero) to whole vectors, so the fused Adam
        # kernel takes every element through its vector loop, never through the scalar tail that
        # rounds differently: a seed's numbers then do not depend on the other seeds beside it.
        total = sum(math.prod(shape) for shape in shapes)
        self.flat = torch.zeros(-(-total // FLAT_ALIGN) * FLAT_ALIGN, device=device)
        self.flat_grad = torch.zeros_like(self.flat)
        self.flat.grad = self.flat_grad
        views, grad_views, offset = [], [], 0
        for shape in shapes:
            size = math.prod(shape)
            views.append(self.flat[offset : offset + size].view(shape))
            grad_views.append(self.flat_grad[offset : offset + size].view(shape))
            offset += size
        n = len(layers)
        self.weights, self.biases = views[:n], views[n:]
        self.weight_grads, self.bias_grads = grad_views[:n], grad_views[n:]
        # Seed by seed, straight into the buffer: a 224 px first layer is 25 MB per seed.
        for weight, bias, layer in zip(self.weights, self.biases, layers):
            for s, linear in enumerate(layer):
                weight[s].copy_(linear.weight.detach().T)
                bias[s, 0].copy_(linear.bias.detach())
        self._saved: list[torch.Tensor] = []
        self._masks: list[torch.Tensor | None] = []

    @property
    def n_seeds(self) -> int:
        return self.weights[0].shape[0]

    def parameters(self) -> list[torch.Tensor]:
        """The one flat parameter buffer; its `.grad` is the buffer `backward` fills."""
        return [self.flat]

    def seed_parameters(self, s: int) -> list[torch.Tensor]:
        """Views of seed s's parameters, with `.grad` pointing into the stacked gradients."""
        params = []
        for p, g in zip(self.weights + self.biases, self.weight_grads + self.bias_grads):
            view = p[s]
            view.grad = g[s]
            params.append(view)
        return params

    def forward(self, x: torch.Tensor, dropout_generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """x: (S, B, D) -> logits (S, B, K); keeps what `backward` needs when training."""
        self._saved, self._masks = [], []
        h = x
        last = len(self.weights) - 1
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            if self.training:
                self._saved.append(h)
            h = torch.baddbmm(b, h, w)
            if l < last:
                h = nn.functional.leaky_relu_(h, self.negative_slope)
                if self.training and self.dropout > 0:
                    mask = torch.stack(
                        [dropout_mask(h.shape[1:], self.dropout, g, h.device) for g in dropout_generators]
                    )
                    self._masks.append(mask)
                    h = h * mask
        return h

    def backward(self, grad_logits: torch.Tensor) -> None:
        """Fill the gradient buffers from dLoss/dlogits (S, B, K)."""
        g = grad_logits
        for l in range(len(self.weights) - 1, -1, -1):
            a = self._saved[l]
            torch.bmm(a.transpose(1, 2), g, out=self.weight_grads[l])
            torch.sum(g, dim=1, keepdim=True, out=self.bias_grads[l])
            if l == 0:
                break
            g = torch.bmm(g, self.weights[l].transpose(1, 2))
            if self._masks:
                g.mul_(self._masks[l - 1])
            # `a` is leaky_relu's output (times a dropout mask that already zeroed g where it is 0),
            # positive exactly where its input was: the self_is_result form of the backward.
            g = torch.ops.aten.leaky_relu_backward(g, a, self.negative_slope, True)
        self._saved, self._masks = [], []

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Inference on shared inputs x: (N, D) -> (S, N, K), no dropout, nothing kept."""
        # The first layer seed by seed: a batched matmul would first copy x once per seed.
        h = torch.stack([torch.addmm(self.biases[0][s], x, self.weights[0][s]) for s in range(self.n_seeds)])
        for w, b in zip(self.weights[1:], self.biases[1:]):
            h = torch.baddbmm(b, nn.functional.leaky_relu(h, self.negative_slope), w)
        return h

    def state(self, s: int) -> list[torch.Tensor]:
        return [p[s].clone() for p in self.weights + self.biases]

    def load_state(self, s: int, state: list[torch.Tensor]) -> None:
        for p, saved in zip(self.weights + self.biases, state):
            p[s].copy_(saved)
