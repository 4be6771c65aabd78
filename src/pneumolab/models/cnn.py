"""A small convnet for 28 to 224 px inputs: per entry of `channels` a block of `convs_per_block`
[3x3 conv, BatchNorm if asked, LeakyReLU] and a 2x2 max pool, then (global average pooling if
asked, else flattening) dropout and one linear layer. The defaults are the original plain CNN,
built in the same order from the same random draws, so its numbers are unchanged.

With `batch_norm`, every seed has its own BatchNorm statistics (SeedStack keeps a module per
seed), saved with its weights; training leaves out a last batch of one image (see
`train.train_one_epoch`), which BatchNorm cannot normalise by its batch.
"""

from __future__ import annotations

from torch import nn

from pneumolab.models.mlp import check_slope_and_dropout


class CNN(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], n_outputs: int, channels: list[int],
                 negative_slope: float = 0.01, dropout: float = 0.0, convs_per_block: int = 1,
                 batch_norm: bool = False, global_pool: bool = False):
        super().__init__()
        check_keys(in_shape, channels, negative_slope, dropout, convs_per_block)
        in_channels, height, width = in_shape
        blocks = []
        for out_channels in channels:
            for _ in range(convs_per_block):
                blocks += conv_layer(in_channels, out_channels, negative_slope, batch_norm)
                in_channels = out_channels
            blocks.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels * (1 if global_pool else height * width), n_outputs)

    def forward(self, x):
        return self.classifier(self.dropout(self.pool(self.features(x)).flatten(1)))


def check_keys(in_shape: tuple[int, int, int], channels: list[int], negative_slope: float, dropout: float,
               convs_per_block: int) -> None:
    if len(channels) == 0 or any(c < 1 for c in channels):
        raise ValueError(f"model.channels={channels}: give one or more channel counts >= 1, e.g. [16,32]")
    check_slope_and_dropout(negative_slope, dropout)
    if convs_per_block < 1:
        raise ValueError(f"model.convs_per_block={convs_per_block}: use at least 1 convolution per block "
                         "(2 pairs them, as in VGG)")
    smallest = 2 ** len(channels)
    if min(in_shape[1:]) < smallest:
        raise ValueError(f"model.channels={channels} has {len(channels)} pooling stages, which need images of at "
                         f"least {smallest} px, but these are {in_shape[1]}x{in_shape[2]}: use fewer model.channels "
                         "or a larger image size")


def conv_layer(in_channels: int, out_channels: int, negative_slope: float, batch_norm: bool) -> list[nn.Module]:
    # BatchNorm's shift takes the place of the convolution's bias.
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)
    norm = [nn.BatchNorm2d(out_channels)] if batch_norm else []
    return [conv, *norm, nn.LeakyReLU(negative_slope)]
