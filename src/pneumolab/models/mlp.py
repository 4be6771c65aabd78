"""The report's network: flatten -> [Linear, LeakyReLU, Dropout] x n -> Linear (model=mlp)."""

from __future__ import annotations

from torch import nn


class MLP(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], n_outputs: int, hidden_sizes: list[int],
                 negative_slope: float = 0.01, dropout: float = 0.0):
        super().__init__()
        if len(hidden_sizes) == 0 or any(h < 1 for h in hidden_sizes):
            raise ValueError(f"model.hidden_sizes={hidden_sizes}: give one or more layer widths >= 1, e.g. [128,128,128]")
        check_slope_and_dropout(negative_slope, dropout)
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


def check_slope_and_dropout(negative_slope: float, dropout: float) -> None:
    if negative_slope < 0:
        raise ValueError(f"model.negative_slope={negative_slope}: use a slope >= 0, e.g. 0.01")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout={dropout}: use a probability in [0, 1)")
