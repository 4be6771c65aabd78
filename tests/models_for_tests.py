"""Custom models as users write them: plain one-seed nn.Modules (model=custom)."""

from torch import nn


class TinyConvNet(nn.Module):
    def __init__(self, in_shape, n_outputs, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                  nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * width, n_outputs))

    def forward(self, x):
        return self.body(x)


class WrongShape(nn.Module):
    def __init__(self, in_shape, n_outputs):
        super().__init__()
        self.linear = nn.Linear(in_shape[1] * in_shape[2], n_outputs + 1)

    def forward(self, x):
        return self.linear(x.flatten(1))


class NeedsDepth(nn.Module):
    def __init__(self, in_shape, n_outputs, depth):
        super().__init__()


class HostOnly(TinyConvNet):
    """Reads a weight's value while it is built, which torch's meta device (no values) cannot give."""

    def __init__(self, in_shape, n_outputs):
        super().__init__(in_shape, n_outputs)
        self.start_scale = self.body[-1].weight.detach().abs().max().item()
