"""Small reference architectures for 1x32x32 glyph classification (torch only).

Each CNN uses Conv -> BatchNorm2d directly (no op in between), so the legacy ONNX
exporter folds every BN into its conv in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(
    c_in: int,
    c_out: int,
    k: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias) -> BN -> optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project (+ Add)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(c_in, hidden, 1, act=nn.ReLU6))
        layers.append(conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6))
        layers.append(conv_bn(hidden, c_out, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2S(nn.Module):
    """Strided stem, four inverted-residual stages (two strided), 1x1 head, GAP, Linear."""

    # (expand, channels, repeats, stride)
    STAGES = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 40, 2, 2), (4, 64, 2, 1))

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(1, 16, 3, 2, act=nn.ReLU6)]
        c_in = 16
        for expand, c_out, repeats, stride in self.STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expand))
                c_in = c_out
        layers.append(conv_bn(c_in, 160, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(160, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """ResNet basic block; strided blocks get a 1x1 conv + BN projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride)
        self.conv2 = conv_bn(c_out, c_out, 3, act=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = conv_bn(c_in, c_out, 1, stride, act=None)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNetS(nn.Module):
    """Strided stem, three stages of basic blocks (16x16, 8x8, 4x4), GAP, Linear."""

    WIDTHS = (24, 48, 96)

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = conv_bn(1, self.WIDTHS[0], 3, 2)
        blocks: list[nn.Module] = []
        c_in = self.WIDTHS[0]
        for i, width in enumerate(self.WIDTHS):
            blocks.append(BasicBlock(c_in, width, 1 if i == 0 else 2))
            blocks.append(BasicBlock(width, width, 1))
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class VggS(nn.Module):
    """Conv-BN-ReLU-MaxPool x3 (to 64 x 4 x 4), Flatten, Linear-ReLU-Linear."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        widths = (1, 32, 48, 64)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [conv_bn(c_in, c_out, 3), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.features(x))
        return self.fc2(self.drop(self.relu(self.fc1(x))))


class DenseBlock(nn.Module):
    """Each layer Conv3x3-BN-ReLU on the running concat, appended with torch.cat."""

    def __init__(self, c_in: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(conv_bn(c_in + i * growth, growth, 3) for i in range(layers))
        self.out_channels = c_in + layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class DenseCatS(nn.Module):
    """Strided stem, dense blocks joined by 1x1 Conv-BN-ReLU + AvgPool transitions."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        stages: list[nn.Module] = [conv_bn(1, 24, 3, 2)]
        c_in = 24
        for growth, trans in ((12, 48), (16, 64)):
            block = DenseBlock(c_in, growth, 3)
            stages += [block, conv_bn(block.out_channels, trans, 1), nn.AvgPool2d(2)]
            c_in = trans
        last = DenseBlock(c_in, 16, 2)
        stages.append(last)
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class Attention(nn.Module):
    """Multi-head softmax attention written with Linear, MatMul and Softmax."""

    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.tokens = heads, dim // heads, tokens
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Python-int shapes (-1 for batch) keep Reshape shapes constant in ONNX.
        qkv = self.qkv(x).reshape(-1, self.tokens, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(-1, self.tokens, self.heads * self.head_dim)
        return self.proj(out)


class EncoderBlock(nn.Module):
    """Pre-LN transformer encoder block: x + Attn(LN(x)); x + MLP(LN(x)), GELU MLP."""

    def __init__(self, dim: int, heads: int, tokens: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VitS(nn.Module):
    """Hybrid ViT: two strided 3x3 Conv-ReLU stem layers (to 64 x 8 x 8), a 2x2
    patch-embedding Conv (4x4 = 16 tokens), learned positions, pre-LN encoder blocks,
    mean pooling, final LayerNorm, Linear head.

    The conv stem (ViT-hybrid, Dosovitskiy et al. 2021; Xiao et al. 2021) and the init
    (residual-branch output weights zero, so each block starts as the identity; query/key
    rows of qkv scaled by QK_INIT_GAIN for sharper initial attention) are what let a ViT
    this small pass 95 % within the build's budget; a plain 4x4-patch ViT sat near
    chance level for several epochs.
    """

    QK_INIT_GAIN = 4.0

    def __init__(
        self, num_classes: int, dim: int = 96, depth: int = 3, heads: int = 4, mlp_ratio: int = 2
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU()
        )
        self.patch_embed = nn.Conv2d(64, dim, 2, 2)
        tokens = 16
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(
            *(EncoderBlock(dim, heads, tokens, mlp_ratio) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        with torch.no_grad():
            for block in self.blocks:
                block.attn.qkv.weight[: 2 * dim] *= self.QK_INIT_GAIN
                block.attn.proj.weight.zero_()
                block.mlp[2].weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.stem(x)).flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "mobilenetv2_s": MobileNetV2S,
    "resnet_s": ResNetS,
    "vgg_s": VggS,
    "densecat_s": DenseCatS,
    "vit_s": VitS,
}
