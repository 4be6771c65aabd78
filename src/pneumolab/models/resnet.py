"""torchvision's ResNet-18 for one-channel small images, from scratch (model=resnet; the `resnet` extra).

ImageNet's stem (a 7x7 stride-2 convolution and a max pool) would shrink a 28 px image to 7 px
before the first residual stage; a 3x3 stride-1 convolution and no max pool keep 28x28 there,
as CIFAR ResNets do. State-dict keys are torchvision's, so a ResNet-18 with the same two
changes trained elsewhere loads with model.weights=PATH.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


class ResNet18(ResNet):
    def __init__(self, in_shape: tuple[int, int, int], n_outputs: int):
        # What torchvision.models.resnet18(weights=None, num_classes=n_outputs) builds.
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=n_outputs)
        self.conv1 = nn.Conv2d(in_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's other convs
        self.maxpool = nn.Identity()
