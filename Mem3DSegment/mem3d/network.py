"""Space-time memory (STM) network with configurable width and depth.

One class builds both the reference ResNet-50 layout, whose state-dict names match the published
STM and Mem3D checkpoints, and the project's compact layout. Building a network never downloads
anything: every weight starts from PyTorch's default initialisation.

Tensor shapes use B (batch), C (channels), T (memory slices), H and W (rows and columns of the
network input, which is a cropped and resized slice).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of an STM network.

    The defaults describe the reference layout (ResNet-50 trunk to stride 16, key 128, value 512,
    decoder 256), which is what published checkpoints hold.
    """

    block: str = "bottleneck"  # "bottleneck" (ResNet-50) or "basic" (ResNet-18 style)
    stem_channels: int = 64
    widths: tuple[int, int, int] = (64, 128, 256)  # inner width of res2, res3, res4
    depths: tuple[int, int, int] = (3, 4, 6)  # residual blocks in res2, res3, res4
    image_channels: int = 3  # the grey slice is repeated to this many channels
    key_channels: int = 128
    value_channels: int = 512
    decoder_channels: int = 256
    second_mask: str = "bg"  # "bg": 1 - mask (Mem3D conv1_bg); "o": other objects (STM conv1_o)
    aspp: bool = False  # ASPP decoder head (Decoder.layer5) instead of Decoder.convFM
    quality: str = "none"  # "none", "saq" (Mem3D's IoU head) or "compact" (this project's)
    prior_mask: bool = False  # query encoder also takes the previous slice's mask (conv1_p)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 384  # side of the square network input, in pixels

    def __post_init__(self):
        if self.block not in ("bottleneck", "basic"):
            raise ValueError(f"block must be 'bottleneck' or 'basic', not {self.block!r}")
        if self.second_mask not in ("bg", "o"):
            raise ValueError(f"second_mask must be 'bg' or 'o', not {self.second_mask!r}")
        if self.quality not in ("none", "saq", "compact"):
            raise ValueError(f"quality must be 'none', 'saq' or 'compact', not {self.quality!r}")
        if len(self.mean) != self.image_channels or len(self.std) != self.image_channels:
            raise ValueError("mean and std need one value per image channel")

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def feature_channels(self) -> tuple[int, int, int]:
        """Output channels of res2, res3 and res4 (strides 4, 8 and 16)."""
        return tuple(w * self.expansion for w in self.widths)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "NetworkConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown network settings {unknown}; this mem3d version is too old")
        tuples = {k: tuple(v) for k, v in values.items() if isinstance(v, list)}
        return cls(**{**values, **tuples})


def reference_config(variant: str = "plain", second_mask: str = "bg") -> NetworkConfig:
    """Return the published ResNet-50 layout: "plain", "aspp" or "saq" (ASPP + quality head)."""
    if variant not in ("plain", "aspp", "saq"):
        raise ValueError(f"variant must be 'plain', 'aspp' or 'saq', not {variant!r}")
    return NetworkConfig(
        second_mask=second_mask,
        aspp=variant in ("aspp", "saq"),
        quality="saq" if variant == "saq" else "none",
        input_size=512,
    )


def compact_config() -> NetworkConfig:
    """Return the project's compact layout: ResNet-18-style encoders and a narrow decoder."""
    return NetworkConfig(
        block="basic",
        stem_channels=32,
        widths=(32, 64, 128),
        depths=(2, 2, 2),
        image_channels=1,
        key_channels=64,
        value_channels=128,
        decoder_channels=64,
        second_mask="bg",
        quality="compact",
        prior_mask=True,
        mean=(0.5,),
        std=(0.25,),
        input_size=128,
    )


# --- ResNet trunk (torchvision's naming, so published weights load) ------------------------------


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        out_channels = width * 4
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


def make_stage(block: str, in_channels: int, width: int, depth: int, stride: int) -> nn.Sequential:
    """Build one ResNet stage; the first block downsamples when stride or width change."""
    block_class = Bottleneck if block == "bottleneck" else BasicBlock
    out_channels = width * (4 if block == "bottleneck" else 1)
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    layers = [block_class(in_channels, width, stride, downsample)]
    layers += [block_class(out_channels, width, 1, None) for _ in range(depth - 1)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """ResNet trunk to stride 16 with extra 1-channel stem inputs summed into the first conv.

    `extra_inputs` names the extra stems. The memory encoder has `conv1_m` (the object's mask)
    and `conv1_bg` or `conv1_o`, and the compact query encoder has `conv1_p` (the prior mask).
    """

    def __init__(self, config: NetworkConfig, extra_inputs: tuple[str, ...]):
        super().__init__()
        stem = config.stem_channels
        self.extra_inputs = extra_inputs
        for name in extra_inputs:
            setattr(self, name, nn.Conv2d(1, stem, 7, stride=2, padding=3, bias=False))
        self.conv1 = nn.Conv2d(config.image_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        channels = config.feature_channels
        self.res2 = make_stage(config.block, stem, config.widths[0], config.depths[0], 1)
        self.res3 = make_stage(config.block, channels[0], config.widths[1], config.depths[1], 2)
        self.res4 = make_stage(config.block, channels[1], config.widths[2], config.depths[2], 2)
        shape = (1, config.image_channels, 1, 1)
        self.register_buffer("mean", torch.tensor(config.mean).view(shape))
        self.register_buffer("std", torch.tensor(config.std).view(shape))

    def forward(self, image: torch.Tensor, *extras: torch.Tensor):
        """Encode an image in [0, 1] (B, C, H, W) plus one (B, 1, H, W) map per extra stem."""
        x = self.conv1((image - self.mean) / self.std)
        for name, extra in zip(self.extra_inputs, extras):
            x = x + getattr(self, name)(extra)
        x = F.max_pool2d(F.relu(self.bn1(x)), 3, stride=2, padding=1)
        r2 = self.res2(x)
        r3 = self.res3(r2)
        r4 = self.res4(r3)
        return r4, r3, r2


class KeyValue(nn.Module):
    def __init__(self, in_channels: int, key_channels: int, value_channels: int):
        super().__init__()
        self.Key = nn.Conv2d(in_channels, key_channels, 3, padding=1)
        self.Value = nn.Conv2d(in_channels, value_channels, 3, padding=1)

    def forward(self, x):
        return self.Key(x), self.Value(x)


# --- Decoder -------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        r = self.conv1(F.relu(x))
        r = self.conv2(F.relu(r))
        return x + r


class Refine(nn.Module):
    """Merge a skip connection with the upsampled coarser decoder features."""

    def __init__(self, skip_channels: int, channels: int):
        super().__init__()
        self.convFS = nn.Conv2d(skip_channels, channels, 3, padding=1)
        self.ResFS = ResBlock(channels)
        self.ResMM = ResBlock(channels)

    def forward(self, skip, coarse):
        s = self.ResFS(self.convFS(skip))
        m = s + F.interpolate(coarse, size=s.shape[-2:], mode="bilinear", align_corners=False)
        return self.ResMM(m)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: image pooling, 1x1 and three dilated 3x3 branches."""

    def __init__(self, in_channels: int, channels: int, dilations=(2, 4, 8)):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 1)
        self.bn_x = nn.BatchNorm2d(channels)
        self.conv2d_0 = nn.Conv2d(in_channels, channels, 1)
        self.bn_0 = nn.BatchNorm2d(channels)
        for i, dilation in enumerate(dilations, start=1):
            conv = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)
            setattr(self, f"conv2d_{i}", conv)
            setattr(self, f"bn_{i}", nn.BatchNorm2d(channels))
        self.branches = 1 + len(dilations)
        self.bottleneck = nn.Conv2d(channels * (self.branches + 1), channels, 3, padding=1)

    def forward(self, x):
        pooled = F.relu(self.bn_x(self.conv(F.adaptive_avg_pool2d(x, 1))))
        outputs = [pooled.expand(-1, -1, x.shape[-2], x.shape[-1])]
        for i in range(self.branches):
            conv, bn = getattr(self, f"conv2d_{i}"), getattr(self, f"bn_{i}")
            outputs.append(F.relu(bn(conv(x))))
        return F.relu(self.bottleneck(torch.cat(outputs, dim=1)))


class Decoder(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        in_channels = 2 * config.value_channels
        channels = config.decoder_channels
        if config.aspp:
            self.layer5 = ASPP(in_channels, channels)
        else:
            self.convFM = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.ResMM = ResBlock(channels)
        r4, r3, r2 = config.feature_channels[::-1]
        self.RF3 = Refine(r3, channels)
        self.RF2 = Refine(r2, channels)
        self.pred2 = nn.Conv2d(channels, 2, 3, padding=1)

    def forward(self, memory_read, r3, r2):
        head = self.layer5 if hasattr(self, "layer5") else self.convFM
        m4 = self.ResMM(head(memory_read))
        m3 = self.RF3(r3, m4)
        m2 = self.RF2(r2, m3)
        return self.pred2(F.relu(m2))  # logits (B, 2, H/4, W/4)


# --- Quality heads -------------------------------------------------------------------------------


class CompactQuality(nn.Module):
    """Predict the IoU of a slice's mask from query features and the predicted probability."""

    def __init__(self, feature_channels: int, channels: int = 64):
        super().__init__()
        self.conv = nn.Conv2d(feature_channels + 2, channels, 3, padding=1)
        self.fc = nn.Linear(channels, 1)

    def forward(self, r4, probability):
        small = F.interpolate(probability, size=r4.shape[-2:], mode="bilinear", align_corners=False)
        x = F.relu(self.conv(torch.cat([r4, small, (small > 0.5).to(small.dtype)], dim=1)))
        return torch.sigmoid(self.fc(x.mean(dim=(2, 3)))).squeeze(1)


# --- The network ---------------------------------------------------------------------------------


@dataclass
class QueryFeatures:
    """Query encoder outputs for one batch of slices."""

    key: torch.Tensor  # (B, Ck, H/16, W/16)
    value: torch.Tensor  # (B, Cv, H/16, W/16)
    r4: torch.Tensor
    r3: torch.Tensor
    r2: torch.Tensor
    size: tuple[int, int] = field(default=(0, 0))


class STM(nn.Module):
    """Space-time memory network: encode memory slices, read them for a query slice, decode."""

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = config or NetworkConfig()
        c = self.config
        second = "conv1_bg" if c.second_mask == "bg" else "conv1_o"
        self.Encoder_M = Encoder(c, ("conv1_m", second))
        self.Encoder_Q = Encoder(c, ("conv1_p",) if c.prior_mask else ())
        r4 = c.feature_channels[2]
        self.KV_M_r4 = KeyValue(r4, c.key_channels, c.value_channels)
        self.KV_Q_r4 = KeyValue(r4, c.key_channels, c.value_channels)
        self.Decoder = Decoder(c)
        if c.quality == "saq":
            self.conv1 = nn.Conv2d(r4 + 2, r4, 3, padding=1, bias=False)
            self.res5 = make_stage("bottleneck", r4, 512, 3, 2)
            self.fc = nn.Linear(2048, 1000)
            self.fc2 = nn.Linear(1000, 1)
        elif c.quality == "compact":
            self.Quality = CompactQuality(r4)
        if c.prior_mask:
            # The decoder's logits are added to the prior's, scaled by this learned gain, so an
            # untrained network starts by copying the previous slice's mask and learns to correct
            # it, which trains far faster than predicting every mask from nothing.
            self.prior_gain = nn.Parameter(torch.tensor(2.0))

    def encode_memory(self, image, mask, second_mask):
        """Encode slices (B, C, H, W) with their masks (B, 1, H, W) into memory key and value.

        `second_mask` is 1 - mask for "bg" layouts and the other objects' union for "o" layouts.
        """
        r4, _, _ = self.Encoder_M(image, mask, second_mask)
        return self.KV_M_r4(r4)

    def encode_query(self, image, prior=None) -> QueryFeatures:
        extras = (prior,) if self.config.prior_mask else ()
        if self.config.prior_mask and prior is None:
            raise ValueError("this network needs the previous slice's mask as prior")
        r4, r3, r2 = self.Encoder_Q(image, *extras)
        key, value = self.KV_Q_r4(r4)
        return QueryFeatures(key, value, r4, r3, r2, tuple(image.shape[-2:]))

    @staticmethod
    def read_memory(memory_key, memory_value, query_key, query_value):
        """Attend from the query to every memory position.

        memory_key (B, Ck, T, h, w), memory_value (B, Cv, T, h, w), query key (B, Ck, h, w).
        Returns (B, 2 Cv, h, w): the memory read concatenated with the query value. The softmax
        runs over the last, contiguous dimension of a batched product, the fastest form on CPU.
        """
        b, ck, t, h, w = memory_key.shape
        mk = memory_key.reshape(b, ck, t * h * w)
        qk = query_key.reshape(b, ck, h * w).transpose(1, 2)  # (B, hw, Ck)
        affinity = torch.bmm(qk, mk) / math.sqrt(ck)  # (B, hw, Thw)
        affinity = torch.softmax(affinity, dim=-1)
        mv = memory_value.reshape(b, memory_value.shape[1], t * h * w).transpose(1, 2)
        read = torch.bmm(affinity, mv).transpose(1, 2).reshape(b, -1, h, w)
        return torch.cat([read, query_value], dim=1)

    def decode(self, query: QueryFeatures, memory_key, memory_value, prior=None):
        """Return foreground probability (B, 1, H, W), quality (B,) or None, and logits.

        `prior` (B, 1, H, W), the previous slice's mask, is required by layouts with a prior input.
        """
        read = self.read_memory(memory_key, memory_value, query.key, query.value)
        logits = self.Decoder(read, query.r3, query.r2)
        logits = F.interpolate(logits.float(), size=query.size, mode="bilinear", align_corners=False)
        if self.config.prior_mask:
            if prior is None:
                raise ValueError("this network needs the previous slice's mask as prior")
            shift = self.prior_gain.float() * (2 * prior.float() - 1)
            logits = logits + torch.cat([-shift, shift], dim=1)
        probability = torch.softmax(logits, dim=1)[:, 1:2]
        return probability, self.quality(query, probability), logits

    def quality(self, query: QueryFeatures, probability):
        if self.config.quality == "compact":
            return self.Quality(query.r4, probability.to(query.r4.dtype)).float()
        if self.config.quality == "saq":
            small = F.interpolate(probability, size=query.r4.shape[-2:], mode="bilinear")
            small = small.to(query.r4.dtype)
            hard = (small > 0.5).to(small.dtype)
            x = self.conv1(torch.cat([query.r4, hard, small], dim=1))
            x = F.adaptive_avg_pool2d(self.res5(x), 1).flatten(1)
            return torch.sigmoid(self.fc2(F.relu(self.fc(x)))).squeeze(1).float()
        return None


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
