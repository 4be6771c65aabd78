"""The report's network: flatten -> [Linear, LeakyReLU, Dropout] x n -> Linear."""

from __future__ import annotations

from torch import nn


class MLP(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], n_outputs: int, hidden_sizes: list[int],
                 negative_slope: float = 0.01, dropout: float = 0.0):
        super().__init__()
        channels, height, width = in_shape
        sizes = [channels * height * width, *hidden_sizes, n_outputs]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = nn.LeakyReLU(negative_slope)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        h = x.flatten(1)
        for layer in self.linears[:-1]:
            h = self.dropout(self.activation(layer(h)))
        return self.linears[-1](h)
