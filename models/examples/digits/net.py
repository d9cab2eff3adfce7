"""The digits CNN in torch: a stem, two residual blocks, a concat of two branches, a strided
transition and two more residual blocks, global average pooling and a linear classifier.

Every convolution is followed by BatchNormalization, every residual block adds an identity
shortcut, so the exported graph has a residual stream per stage and a concat to prune
through. torch is imported when a network is built, never at import time.
"""

from __future__ import annotations

WIDTH = 32  # channels of the first stage; the second has 2 * WIDTH


def digits_cnn(width: int = WIDTH, classes: int = 10):
    """A fresh (untrained) network; load ``digits_cnn.pt`` into it for the trained one."""
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))

    class Block(nn.Module):
        """relu(x + bn(conv(relu(bn(conv(x))))))"""

        def __init__(self, c: int):
            super().__init__()
            self.a, self.b = conv_bn(c, c), conv_bn(c, c)

        def forward(self, x):
            return torch.relu(x + self.b(torch.relu(self.a(x))))

    class Concat(nn.Module):
        """A 3x3 and a 1x1 branch side by side, concatenated on channels."""

        def __init__(self, c: int):
            super().__init__()
            self.wide, self.narrow = conv_bn(c, c, 3), conv_bn(c, c, 1)

        def forward(self, x):
            return torch.cat([torch.relu(self.wide(x)), torch.relu(self.narrow(x))], dim=1)

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(1, width)
            self.stage1 = nn.Sequential(Block(width), Block(width))
            self.mix = Concat(width)
            self.down = conv_bn(2 * width, 2 * width, 3, stride=2)
            self.stage2 = nn.Sequential(Block(2 * width), Block(2 * width))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2 * width, classes)

        def forward(self, x):
            x = self.stage1(torch.relu(self.stem(x)))
            x = self.stage2(torch.relu(self.down(self.mix(x))))
            return self.fc(torch.flatten(self.pool(x), 1))

    return DigitsCNN()


def load_trained(path=None):
    """The trained network (eval mode) from ``digits_cnn.pt``."""
    import torch

    from . import STATE_DICT

    net = digits_cnn()
    net.load_state_dict(torch.load(path or STATE_DICT, map_location="cpu", weights_only=True))
    return net.eval()
