"""The U-Net of Ronneberger, Fischer & Brox (2015), with 'same' padding.

Per level: two 3x3 convolutions, each followed by a norm and ReLU; 2x2
max-pooling down; 2x2 transposed convolution up; the skip connection is
concatenated; a 1x1 convolution maps to class logits. With 'same' padding the
output has the input's size for any size divisible by ``2**depth``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from .config import UNetConfig


class InstanceNorm(nn.InstanceNorm2d):
    """Instance norm (affine, no running statistics) computed as a group norm
    with one group per channel: the same numbers (each channel of each image
    normalised over its own pixels) and the same parameters, but torch's
    group-norm kernel handles the channels-last tensors that prediction uses
    on the CPU 2-4x faster than its instance-norm kernel
    (``benchmarks/bench_predict.py --fine-tuned 12 32``, docs/performance.md);
    training runs channels-first, where the two kernels are about even."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.track_running_stats or not self.affine or x.dim() != 4:
            return super().forward(x)
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return InstanceNorm(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two (3x3 conv -> norm -> ReLU) steps."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class Encoder(nn.Module):
    """Contracting path: returns the feature map of every level."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        widths = config.widths()
        in_widths = [config.in_channels, *widths[:-1]]
        self.blocks = nn.ModuleList(ConvBlock(i, o, config.norm) for i, o in zip(in_widths, widths))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level, block in enumerate(self.blocks):
            if level:
                x = self.pool(x)
            x = block(x)
            features.append(x)
        return features


class Decoder(nn.Module):
    """Expanding path: up-convolution, skip concatenation, conv block."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        widths = config.widths()
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for level in reversed(range(config.depth)):
            deep, skip = widths[level + 1], widths[level]
            self.ups.append(nn.ConvTranspose2d(deep, skip, kernel_size=2, stride=2))
            self.blocks.append(ConvBlock(2 * skip, skip, config.norm))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(features[:-1])):
            x = block(torch.cat([up(x), skip], dim=1))
        return x


class UNet(nn.Module):
    """encoder -> decoder -> 1x1 head, producing per-pixel class logits."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.head = nn.Conv2d(config.widths()[0], config.num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.config.divisor
        if x.shape[-1] % d or x.shape[-2] % d:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not divisible by {d} "
                f"(2**depth); pad it (the predictor does this for you)"
            )
        return self.head(self.decoder(self.encoder(x)))

    def freeze_encoder(self) -> None:
        """Stop training the contracting path, norm statistics included."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def add_classes(self, extra: int) -> None:
        """Grow the 1x1 head by ``extra`` output channels, keeping learned ones."""
        old = self.head
        new = nn.Conv2d(old.in_channels, old.out_channels + extra, kernel_size=1)
        with torch.no_grad():
            new.weight[: old.out_channels] = old.weight
            new.bias[: old.out_channels] = old.bias
            new.weight[old.out_channels :].normal_(0.0, 0.01)
            # start new classes unlikely, so old predictions are unchanged
            new.bias[old.out_channels :] = old.bias.min() - 4.0
        self.head = new.to(old.weight.device)
        from dataclasses import replace

        self.config = replace(self.config, num_classes=old.out_channels + extra)


def set_norm_eval(module: nn.Module) -> None:
    """Put every norm layer in eval mode (fixed statistics), e.g. for fine-tuning
    with tiny batches where batch statistics would be noise."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def fuse_batchnorm(net: UNet) -> nn.Module:
    """A copy of ``net`` for inference with every BatchNorm folded into the
    preceding convolution (one memory pass fewer per layer)."""
    fused = copy.deepcopy(net).eval()
    for block in fused.modules():
        if not isinstance(block, ConvBlock):
            continue
        layers = list(block)
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.BatchNorm2d) and isinstance(layers[i - 1], nn.Conv2d):
                conv = layers[i - 1]
                scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(layer.running_mean)
                with torch.no_grad():
                    new_conv = nn.Conv2d(
                        conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=True
                    )
                    new_conv.weight.copy_(conv.weight * scale[:, None, None, None])
                    new_conv.bias.copy_((bias - layer.running_mean) * scale + layer.bias)
                block[i - 1] = new_conv
                block[i] = nn.Identity()
    return fused


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def conv_flops(config: UNetConfig, height: int, width: int) -> float:
    """Floating-point operations (2 per multiply-add) of one forward pass."""
    widths = config.widths()
    flops = 0.0
    pixels = height * width
    in_w = config.in_channels
    for level, w in enumerate(widths):
        p = pixels / 4**level
        flops += 2 * 9 * (in_w * w + w * w) * p
        in_w = w
    for level in reversed(range(config.depth)):
        deep, skip = widths[level + 1], widths[level]
        p = pixels / 4**level
        flops += 2 * deep * skip * p  # 2x2 transposed conv: `deep` MACs per output value
        flops += 2 * 9 * (2 * skip * skip + skip * skip) * p
    flops += 2 * widths[0] * config.num_classes * pixels
    return flops


def to_instance_norm(net: UNet) -> UNet:
    """A copy of a batch-norm ``net`` whose norms are instance norms that keep
    the learned scale and shift (the convolutions are unchanged).

    Batch norm with statistics frozen from training data normalises every
    image alike; instance norm normalises each image (each tile) by its own
    feature statistics, which carries a model across the slice-to-slice and
    scan-to-scan intensity changes of real MRI and CT far better when it
    learns from a few corrected slices (measured in docs/real-scans.md).
    """
    from dataclasses import replace

    if net.config.norm != "batch":
        raise ValueError(f"only a batch-norm U-Net can be converted, this one uses {net.config.norm!r}")
    new = UNet(replace(net.config, norm="instance"))
    state = {k: v for k, v in net.state_dict().items() if not k.endswith(("running_mean", "running_var",
                                                                           "num_batches_tracked"))}
    missing, unexpected = new.load_state_dict(state, strict=False)
    if missing or unexpected:  # pragma: no cover - the two layouts are the same by construction
        raise RuntimeError(f"norm conversion mismatch: missing {missing}, unexpected {unexpected}")
    return new.to(next(net.parameters()).device)


def widen(net: UNet, base_channels: int, seed: int = 0) -> UNet:
    """A copy of ``net`` with ``base_channels`` at full resolution (every level
    at least as wide as before) that computes exactly the same function.

    The learned channels keep their weights; every new channel gets fresh
    random incoming weights (the layer's default initialisation, seeded) and
    zero outgoing weights, so the output does not change until training moves
    them (as Net2Net's function-preserving widening, with fresh features in
    place of copies). A wider network learns more per step from a few
    corrections; the learned channels carry the bundled model's prior.
    """
    from dataclasses import replace

    if net.config.norm == "group":
        raise ValueError("a group-norm U-Net cannot be widened exactly (its groups would change)")
    old_widths = net.config.widths()
    config = replace(net.config, base_channels=base_channels, max_channels=max(net.config.max_channels,
                                                                               base_channels))
    new_widths = config.widths()
    if any(n < o for n, o in zip(new_widths, old_widths)):
        raise ValueError(f"widening to {new_widths} would narrow a level of {old_widths}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        wide = UNet(config)
    finally:
        torch.random.set_rng_state(generator_state)
    old_modules, new_modules = dict(net.named_modules()), dict(wide.named_modules())

    def copy_conv(name: str, inputs: list[int], outputs: int, transposed: bool = False) -> None:
        """Old weights into the first ``outputs`` channels, read from input
        channels ``inputs``; weights from any other input channel set to 0."""
        old, new = old_modules[name], new_modules[name]
        weight_new = new.weight.transpose(0, 1) if transposed else new.weight  # (out, in, kh, kw)
        weight_old = old.weight.transpose(0, 1) if transposed else old.weight
        others = torch.ones(weight_new.shape[1], dtype=torch.bool)
        others[inputs] = False
        weight_new[:, others] = 0.0
        weight_new[:outputs, inputs] = weight_old
        if old.bias is not None:
            new.bias[:outputs] = old.bias

    def copy_norm(name: str, channels: int) -> None:
        old, new = old_modules[name], new_modules[name]
        for attr in ("weight", "bias", "running_mean", "running_var"):
            if getattr(old, attr, None) is not None and getattr(new, attr, None) is not None:
                getattr(new, attr)[:channels] = getattr(old, attr)

    def copy_block(prefix: str, inputs: list[int], channels: int) -> None:
        copy_conv(f"{prefix}.0", inputs, channels)
        copy_conv(f"{prefix}.3", list(range(channels)), channels)
        if net.config.norm != "none":
            copy_norm(f"{prefix}.1", channels)
            copy_norm(f"{prefix}.4", channels)

    with torch.no_grad():
        inputs = list(range(net.config.in_channels))
        for level, channels in enumerate(old_widths):
            copy_block(f"encoder.blocks.{level}", inputs, channels)
            inputs = list(range(channels))
        for i, level in enumerate(reversed(range(net.config.depth))):
            channels = old_widths[level]
            copy_conv(f"decoder.ups.{i}", inputs, channels, transposed=True)
            # the block reads [up-convolved (new width) | skip (new width)]
            both = list(range(channels)) + [new_widths[level] + c for c in range(channels)]
            copy_block(f"decoder.blocks.{i}", both, channels)
            inputs = list(range(channels))
        copy_conv("head", inputs, net.config.num_classes)
    wide.train(net.training)
    return wide.to(next(net.parameters()).device)
