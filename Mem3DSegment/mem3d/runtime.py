"""Run a loaded STM network on crops: the one place that decides device, dtype and autocast."""

from __future__ import annotations

import contextlib
import logging
import platform
from dataclasses import dataclass

import torch

from .errors import Mem3DError
from .network import STM

log = logging.getLogger(__name__)


def choose_device(name: str = "auto") -> torch.device:
    """Return the torch device for "auto", "cpu" or "cuda" (or "cuda:N")."""
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise Mem3DError(f"device {name!r}: torch sees no CUDA GPU here; use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise Mem3DError(f"device {name!r} is not one of auto, cpu, cuda")


def cpu_supports_bf16() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


@dataclass
class ModelRunner:
    """A network on a device, with the autocast that suits it.

    On CPUs with bfloat16 support (AVX-512 BF16 or AMX), autocast runs the convolutions in
    bfloat16, which the compact model was trained with. Other CPUs run float32, and CUDA runs
    float16 autocast.
    """

    network: STM
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    prior_mode: str = "previous"  # the prior the model was trained with; see WalkSettings.prior

    @classmethod
    def create(cls, network: STM, device: str | torch.device = "auto", precision: str = "auto",
               prior_mode: str = "previous"):
        device = device if isinstance(device, torch.device) else choose_device(device)
        network = network.to(device).eval()
        dtype = None
        if precision == "auto":
            if device.type == "cuda":
                dtype = torch.float16
            elif cpu_supports_bf16():
                dtype = torch.bfloat16
        elif precision != "float32":
            raise Mem3DError(f"precision {precision!r} is not one of auto, float32")
        if device.type == "cpu":
            network = network.to(memory_format=torch.channels_last)
        return cls(network, device, dtype, prior_mode)

    @property
    def input_size(self) -> int:
        return self.network.config.input_size

    @property
    def has_quality_head(self) -> bool:
        return self.network.config.quality != "none"

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _image(self, crop: torch.Tensor) -> torch.Tensor:
        """(H, W) in [0, 1] -> (1, C, H, W) with the grey slice repeated to C channels."""
        channels = self.network.config.image_channels
        return crop.to(self.device).view(1, 1, *crop.shape).expand(1, channels, -1, -1)

    def encode_memory(self, image: torch.Tensor, mask: torch.Tensor, other: torch.Tensor | None):
        """Encode one crop with its mask; `other` is the other objects' mask ("o" layouts)."""
        return self._with_cpu_fallback(self._encode_memory, image, mask, other)

    def segment(self, image: torch.Tensor, prior: torch.Tensor, memory_key, memory_value):
        """Return (probability (H, W) float32 on the CPU, quality float or None)."""
        return self._with_cpu_fallback(self._segment, image, prior, memory_key, memory_value)

    def _encode_memory(self, image, mask, other):
        mask = mask.to(self.device).view(1, 1, *mask.shape).float()
        if self.network.config.second_mask == "bg":
            second = 1 - mask
        else:
            second = torch.zeros_like(mask) if other is None else other.to(self.device).view_as(mask)
        with torch.inference_mode(), self.autocast():
            return self.network.encode_memory(self._image(image), mask, second)

    def _segment(self, image, prior, memory_key, memory_value):
        prior = prior.to(self.device).view(1, 1, *prior.shape).float()
        # Memory encoded before a fallback to the CPU is still on the GPU.
        memory_key, memory_value = memory_key.to(self.device), memory_value.to(self.device)
        with torch.inference_mode(), self.autocast():
            query = self.network.encode_query(self._image(image), prior)
            probability, quality, _ = self.network.decode(query, memory_key, memory_value, prior)
        quality_value = None if quality is None else float(quality[0])
        return probability[0, 0].float().cpu(), quality_value

    def _with_cpu_fallback(self, compute, *args):
        """Call `compute`; when a GPU runs out of memory, move the network to the CPU and retry.

        The runner stays on the CPU afterwards, until the model is loaded again.
        """
        try:
            return compute(*args)
        except RuntimeError as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
            out_of_memory = (isinstance(error, torch.cuda.OutOfMemoryError)
                             or "out of memory" in str(error).lower())
            if self.device.type == "cpu" or not out_of_memory:
                raise
            log.warning("the %s device ran out of memory (%s); continuing on the CPU, which is "
                        "slower", self.device, (str(error).splitlines() or ["no details"])[0])
        self._move_to_cpu()
        return compute(*args)

    def _move_to_cpu(self) -> None:
        self.network = self.network.to("cpu", memory_format=torch.channels_last)
        self.device = torch.device("cpu")
        # bfloat16 only where the CPU supports it; a float32 runner stays float32.
        use_bf16 = self.autocast_dtype is not None and cpu_supports_bf16()
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def hardware_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {threads} torch threads, {gpu}, torch {torch.__version__}"
