"""The built-in convolutional networks: a small CNN and ResNet-20, both free of batch statistics.

Per-worker gradients are one ``torch.func.vmap`` over the workers, and a batch-norm layer's running
statistics are state that vmap cannot update per worker; GroupNorm normalises each example on its own,
so a batch of workers is a batch of independent models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SmallCNN", "ResNet20", "GROUPS"]

# GroupNorm with 2 groups per layer: the choice of Hsieh, Phanishayee, Mutlu, Gibbons (ICML 2020) for
# ResNets trained on skewed (non-iid) data, where batch statistics fail.
GROUPS = 2


class SmallCNN(nn.Module):
    """conv3x3(32)-ReLU-maxpool2, conv3x3(64)-ReLU-maxpool2, linear(128)-ReLU, linear(classes).

    Padded convolutions and two poolings: an input of C x H x W (H and W divisible by 4; 8x8 digits,
    28x28 MNIST-type images, 32x32 CIFAR) reaches the first linear layer as 64 * H/4 * W/4 features.
    """

    def __init__(self, channels: int, height: int, width: int, classes: int) -> None:
        super().__init__()
        if height % 4 or width % 4:
            raise ValueError(f"cnn: image height and width must be divisible by 4, got {height}x{width}")
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (height // 4) * (width // 4), 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class _Block(nn.Module):
    """The basic residual block: two 3x3 convolutions, GroupNorm after each; a 1x1 projection on the
    shortcut where the width or the resolution changes."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(GROUPS, outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(GROUPS, outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.GroupNorm(GROUPS, outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 images (He, Zhang, Ren, Sun, CVPR 2016, section 4.2), GroupNorm for BatchNorm.

    A 3x3 convolution to 16 channels, then three stages of three basic blocks at 16, 32 and 64 channels
    (the second and third halving the resolution), global average pooling and a linear layer:
    6 * 3 + 2 = 20 weighted layers, 0.27M parameters for 10 classes. Shortcuts that change shape are
    1x1 projections (the paper's option B).
    """

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 16, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(GROUPS, 16)
        blocks = []
        inputs = 16
        for stage, width in enumerate((16, 32, 64)):
            for b in range(3):
                blocks.append(_Block(inputs, width, 2 if stage > 0 and b == 0 else 1))
                inputs = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.norm(self.conv(x))))
        return self.fc(x.mean((2, 3)))  # global average pooling; a mean's backward is deterministic on CUDA
