"""A small convnet for 28 to 224 px inputs: [3x3 conv, LeakyReLU, 2x2 max pool] per entry of
`channels`, then dropout and one linear layer on the flattened feature map."""

from __future__ import annotations

from torch import nn


class CNN(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], n_outputs: int, channels: list[int],
                 negative_slope: float = 0.01, dropout: float = 0.0):
        super().__init__()
        in_channels, height, width = in_shape
        blocks = []
        for out_channels in channels:
            blocks += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(negative_slope), nn.MaxPool2d(2)]
            in_channels, height, width = out_channels, height // 2, width // 2
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels * height * width, n_outputs)

    def forward(self, x):
        return self.classifier(self.dropout(self.features(x).flatten(1)))
