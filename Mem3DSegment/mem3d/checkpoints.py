"""Read and write STM checkpoints: published Mem3D and STM files and the project's own format.

Published files are PyTorch pickles, read with `torch.load(weights_only=True)`, so a file that
needs arbitrary unpickling is rejected instead of executed. The project's own format is a
safetensors file whose metadata entry "mem3d" is a JSON object with "format_version", "network"
(the `NetworkConfig`) and whatever the trainer recorded.

Every load matches the file's tensors to the network by name and shape. Missing and unexpected
names are reported and logged. A file that would leave a core weight uninitialised is rejected,
because such a network outputs noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import io
import json
import logging
import os
import pickle
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import Mem3DError
from .network import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    STM,
    NetworkConfig,
    compact_config,
    count_parameters,
    reference_config,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_KEY = "mem3d"
RESERVED_METADATA_KEYS = ("format_version", "network")
# A missing tensor under these prefixes makes the network useless, so such files are rejected.
CORE_PREFIXES = ("Encoder_M.", "Encoder_Q.", "KV_M_r4.", "KV_Q_r4.", "Decoder.")
# The normalisation buffers are set from the config, so a file may omit them.
NORMALISATION_BUFFERS = ("Encoder_M.mean", "Encoder_M.std", "Encoder_Q.mean", "Encoder_Q.std")
# Top-level names of the quality heads: Mem3D's (conv1, res5, fc, fc2) and the compact one.
QUALITY_PREFIXES = ("conv1.", "res5.", "fc.", "fc2.", "Quality.")
# Keys under which training scripts store the state dict next to epoch, optimizer and so on.
WRAPPER_KEYS = ("state_dict", "model", "network", "model_state_dict", "net")
FLOAT16_MAX = 65504.0
STAGES = ("res2", "res3", "res4")
FILE_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"\x1f\x8b": "a gzip archive",
    b"\x89HDF": "an HDF5 file",
    b"%PDF": "a PDF document",
    b"<": "an HTML or XML page (a failed download often saves an error page)",
}


@dataclass
class LoadReport:
    """Outcome of matching a checkpoint's tensors to the network built for it."""

    # "mem3d-compact" or "own" (project files), "stm_original", "mem3d_plain", "mem3d_aspp",
    # "mem3d_saq", or "custom" for a published-style file with non-reference widths.
    layout: str
    parameters: int  # parameters of the built network
    loaded: int  # tensors copied from the file into the network
    missing: list[str]  # network tensors absent from the file (num_batches_tracked not listed)
    unexpected: list[str]  # file tensors with no place in the network
    wrapper: str  # storage details, e.g. "legacy serialization, state_dict wrapper, module. prefix"


@dataclass
class LoadedModel:
    """A network in eval mode on its device, with the file's metadata and the load report."""

    network: STM
    metadata: dict
    report: LoadReport
    path: Path


@dataclass
class _Checkpoint:
    """Tensors read from a file and what the file states about them."""

    state: dict
    config: NetworkConfig
    layout: str
    wrapper: str
    metadata: dict


# --- Writing the project's format ----------------------------------------------------------------


def save_model(network: STM, path, metadata: dict | None = None, half: bool = True) -> None:
    """Write `network` and `metadata` to a safetensors file in the project's format.

    With `half`, floating-point parameters are stored as float16 (half the file size) unless a
    value exceeds float16's range. Buffers such as BatchNorm running variances stay float32.
    The file is written under a temporary name and renamed, so an interrupted write leaves the
    previous file (or none) in place.
    """
    path = Path(path)
    header = _metadata_header(network, metadata or {})
    tensors = _storage_tensors(network, half)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file is in the same folder, so os.replace is atomic. It is not made with
    # tempfile.mkstemp, because that would make the final file readable only by its owner.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(temporary), metadata={METADATA_KEY: header})
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    logger.info("saved model to %s (%d tensors)", path, len(tensors))


def _metadata_header(network: STM, metadata: dict) -> str:
    reserved = [key for key in RESERVED_METADATA_KEYS if key in metadata]
    if reserved:
        raise ValueError(f"metadata must not set {reserved}: save_model writes these entries")
    header = {"format_version": FORMAT_VERSION, "network": network.config.to_dict(), **metadata}
    try:
        return json.dumps(header)
    except TypeError as error:
        raise TypeError(f"model metadata must be JSON-serialisable: {error}") from error


def _storage_tensors(network: STM, half: bool) -> dict:
    parameter_names = {name for name, _ in network.named_parameters()}
    tensors = {}
    for name, tensor in network.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        if half and name in parameter_names and tensor.is_floating_point():
            if tensor.numel() == 0 or tensor.abs().max().item() <= FLOAT16_MAX:
                tensor = tensor.to(torch.float16)
        tensors[name] = tensor
    return tensors


# --- Loading -------------------------------------------------------------------------------------


def load_model(path, device="cpu") -> LoadedModel:
    """Load a checkpoint in any supported layout into a new network on `device`.

    Raises Mem3DError, naming the file and the fix, for a missing, empty, truncated, foreign or
    unsafe file and for a file that lacks core weights.
    """
    path = Path(path)
    file_format = _file_format(path)
    if file_format == "safetensors":
        checkpoint = _read_safetensors_file(path)
    else:
        checkpoint = _read_torch_file(path, legacy=file_format == "pickle")
    network, report = _build_network(checkpoint, path)
    network = _move_to_device(network, device, path)
    logger.info(
        "loaded %s: layout %s, %d tensors, %d missing, %d unexpected",
        path, report.layout, report.loaded, len(report.missing), len(report.unexpected),
    )
    return LoadedModel(network.eval(), checkpoint.metadata, report, path)


def _file_format(path: Path) -> str:
    """Return "zip" or "pickle" (PyTorch files) or "safetensors" from the first bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            head = file.read(16)
    except FileNotFoundError:
        raise Mem3DError(f"model file not found: {path}") from None
    except OSError as error:
        raise Mem3DError(f"cannot read model file {path}: {error.strerror or error}") from error
    if size == 0:
        raise Mem3DError(f"model file {path} is empty (0 bytes); download or copy it again")
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x80"):  # pickle protocol 2 or later: PyTorch's legacy format
        return "pickle"
    if head[8:9] == b"{":  # 8-byte header length, then the JSON header
        return "safetensors"
    kind = next((text for magic, text in FILE_SIGNATURES.items() if head.startswith(magic)), None)
    found = kind or f"a file that starts with the bytes {head[:8]!r}"
    raise Mem3DError(
        f"{path} is not a model checkpoint: it is {found}. Select a PyTorch file (.pth, .pt) "
        "of a Mem3D or STM network, or a mem3d .safetensors model."
    )


def _unreadable(path: Path, error: BaseException) -> Mem3DError:
    text = str(error).strip()
    detail = text.splitlines()[0].split(". ")[0][:200] if text else ""  # first sentence only
    return Mem3DError(
        f"cannot read model file {path}: it is truncated or corrupt "
        f"({type(error).__name__}{': ' + detail if detail else ''}); download or copy it again"
    )


# --- Project files (safetensors) -----------------------------------------------------------------


def _read_safetensors_file(path: Path) -> _Checkpoint:
    try:
        with safe_open(str(path), framework="pt") as file:
            header = file.metadata() or {}
            state = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, error) from error
    if METADATA_KEY not in header:
        return _published_checkpoint(path, state, "safetensors without mem3d metadata", {})
    metadata = _parse_header(path, header[METADATA_KEY])
    try:
        config = NetworkConfig.from_dict(metadata["network"])
    except (KeyError, TypeError, ValueError) as error:
        raise Mem3DError(
            f"{path} has an invalid network description ({error}); update mem3d or re-export "
            "the model"
        ) from error
    return _Checkpoint(state, config, _project_layout(config), "safetensors", metadata)


def _parse_header(path: Path, text: str) -> dict:
    try:
        metadata = json.loads(text)
    except ValueError as error:
        raise Mem3DError(f"{path} has corrupt mem3d metadata ({error}); export it again") from error
    if not isinstance(metadata, dict):
        raise Mem3DError(f"{path} has corrupt mem3d metadata (not a JSON object); export it again")
    version = metadata.get("format_version")
    if not isinstance(version, int):
        raise Mem3DError(f"{path} has corrupt mem3d metadata (no format_version); export it again")
    if version > FORMAT_VERSION:
        raise Mem3DError(
            f"{path} uses mem3d model format version {version!r}, but this mem3d reads version "
            f"{FORMAT_VERSION}; update mem3d"
        )
    return metadata


def _project_layout(config: NetworkConfig) -> str:
    """Return "mem3d-compact" for the compact architecture (any input size or normalisation)."""
    differences = _differing_fields(config, compact_config())
    return "mem3d-compact" if differences <= {"input_size", "mean", "std"} else "own"


def _differing_fields(config: NetworkConfig, other: NetworkConfig) -> set:
    return {
        field.name for field in dataclasses.fields(config)
        if getattr(config, field.name) != getattr(other, field.name)
    }


# --- Published files (PyTorch pickles) -----------------------------------------------------------


def _read_torch_file(path: Path, legacy: bool) -> _Checkpoint:
    content = _torch_load(path)
    state, wrapper, fields = _find_state_dict(content, path)
    parts = ["legacy serialization"] if legacy else []
    parts.append(wrapper)
    if any(name.startswith("module.") for name in state):
        state = {name.removeprefix("module."): tensor for name, tensor in state.items()}
        parts.append("module. prefix")
    return _published_checkpoint(path, state, ", ".join(parts), fields)


def _torch_load(path: Path):
    try:
        with _numpy_allowed():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        match = re.search(r"GLOBAL ([\w.]+)", str(error))
        if match is None:
            raise _unreadable(path, error) from error
        raise Mem3DError(
            f"{path} contains Python code or objects ({match.group(1)}) besides tensors, so it "
            "is not loaded for safety: unpickling it could run arbitrary code. If you trust its "
            "source, load it in Python and save only its state dict with torch.save."
        ) from None
    # torch.load raises a dozen exception types on damaged input (EOFError, RuntimeError,
    # KeyError, IndexError, struct.error, ...), so everything else counts as a corrupt file.
    except Exception as error:
        raise _unreadable(path, error) from error


def _numpy_allowed():
    """Return a context in which weights-only loading also accepts numpy scalars and arrays.

    Training scripts often store metrics such as "max_jaccard" as numpy floats. Rebuilding
    numpy scalars, dtypes and arrays creates plain data and runs no code.
    """
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: numpy stays rejected
        return contextlib.nullcontext()
    return torch.serialization.safe_globals(list(_numpy_safe_globals()))


@functools.lru_cache(maxsize=1)
def _numpy_safe_globals() -> tuple:
    try:
        import numpy
    except ImportError:
        return ()
    multiarray = numpy._core.multiarray if hasattr(numpy, "_core") else numpy.core.multiarray
    dtypes = getattr(numpy, "dtypes", None)  # numpy >= 1.25 pickles dtypes by class
    classes = [numpy.ndarray, numpy.dtype]
    classes += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    # numpy 1 and 2 pickle these functions under different module names, so both are listed.
    renamed = [
        (getattr(multiarray, function), f"{module}.{function}")
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for function in ("scalar", "_reconstruct")
    ]
    if _accepts_renamed_globals(renamed):
        return tuple(classes + renamed)
    return tuple(classes + [multiarray.scalar, multiarray._reconstruct])


def _accepts_renamed_globals(renamed: list) -> bool:
    """Return whether this torch version accepts (function, name) pairs as safe globals."""
    buffer = io.BytesIO()
    torch.save({"probe": torch.zeros(1)}, buffer)
    buffer.seek(0)
    try:
        with torch.serialization.safe_globals(renamed):
            torch.load(buffer, weights_only=True)
    except Exception:  # an older torch fails on the pairs in several ways
        return False
    return True


def _find_state_dict(content, path: Path) -> tuple[dict, str, dict]:
    """Return (state dict, wrapper description, scalar fields such as the epoch)."""
    if _is_state_dict(content):
        return dict(content), "bare state dict", {}
    if isinstance(content, dict):
        for key in WRAPPER_KEYS:
            if _is_state_dict(content.get(key)):
                return dict(content[key]), f"{key} wrapper", _scalar_fields(content)
        entries = ", ".join(repr(key) for key in list(content)[:8])
        detail = f"a dictionary with the entries {entries}"
    else:
        detail = f"a {type(content).__name__}"
    raise Mem3DError(
        f"{path} contains {detail} but no state dict (a dictionary of tensors); select a "
        "checkpoint of a Mem3D or STM network"
    )


def _is_state_dict(value) -> bool:
    if not isinstance(value, dict) or not value:
        return False
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _scalar_fields(content: dict) -> dict:
    fields = {}
    for key, value in content.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        elif hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalar
            value = value.item()
        if isinstance(key, str) and isinstance(value, (bool, int, float, str)):
            fields[key] = value
    return fields


def _published_checkpoint(path: Path, state: dict, wrapper: str, fields: dict) -> _Checkpoint:
    if not any(name.startswith(("Encoder_M.", "Encoder_Q.")) for name in state):
        examples = ", ".join(list(state)[:3])
        raise Mem3DError(
            f"{path} does not contain an STM network: none of its {len(state)} tensors belongs "
            f"to Encoder_M or Encoder_Q (first names: {examples}). Select a checkpoint of a "
            "Mem3D or STM network, or a mem3d model."
        )
    config = _infer_config(state, path)
    layout = _published_layout(config)
    return _Checkpoint(state, config, layout, wrapper, _published_metadata(config, layout, fields))


# --- Network layout from tensor names and shapes -------------------------------------------------


def _infer_config(state: dict, path: Path) -> NetworkConfig:
    """Build the NetworkConfig whose state dict has the names and shapes found in `state`.

    Where a name is absent, the reference value is kept, and the strict check later reports the
    name as missing.
    """
    reference = reference_config("plain")

    def read_size(names, dim, default):
        tensor = next((state[name] for name in names if name in state), None)
        return default if tensor is None or tensor.dim() <= dim else int(tensor.shape[dim])

    stem = ("Encoder_Q.conv1.weight", "Encoder_M.conv1.weight")
    key = ("KV_Q_r4.Key.weight", "KV_M_r4.Key.weight")
    value = ("KV_Q_r4.Value.weight", "KV_M_r4.Value.weight")
    block = "bottleneck" if "Encoder_Q.res2.0.conv3.weight" in state else "basic"
    if not any(name.startswith("Encoder_Q.res2.0.") for name in state):
        block = reference.block
    widths = tuple(
        read_size([f"Encoder_Q.{stage}.0.conv1.weight"], 0, reference.widths[i])
        for i, stage in enumerate(STAGES)
    )
    image_channels = read_size(stem, 1, reference.image_channels)
    changes = dict(
        block=block,
        stem_channels=read_size(stem, 0, reference.stem_channels),
        image_channels=image_channels,
        widths=widths,
        depths=_stage_depths(state, reference.depths),
        key_channels=read_size(key, 0, reference.key_channels),
        value_channels=read_size(value, 0, reference.value_channels),
        decoder_channels=read_size(["Decoder.pred2.weight"], 1, reference.decoder_channels),
        **_head_settings(state),
        **_normalisation(state, image_channels),
    )
    try:
        return dataclasses.replace(reference, **changes)
    except ValueError as error:
        raise Mem3DError(f"{path} contains an unsupported network layout: {error}") from error


def _stage_depths(state: dict, default: tuple) -> tuple:
    depths = []
    for stage, fallback in zip(STAGES, default):
        prefix = f"Encoder_Q.{stage}."
        blocks = {name[len(prefix):].split(".")[0] for name in state if name.startswith(prefix)}
        indices = [int(block) for block in blocks if block.isdigit()]
        depths.append(max(indices) + 1 if indices else fallback)
    return tuple(depths)


def _head_settings(state: dict) -> dict:
    quality = "none"
    if any(name.startswith(("res5.", "fc2.")) for name in state):
        quality = "saq"
    elif any(name.startswith("Quality.") for name in state):
        quality = "compact"
    return dict(
        second_mask="o" if "Encoder_M.conv1_o.weight" in state else "bg",
        aspp=any(name.startswith("Decoder.layer5.") for name in state),
        quality=quality,
        prior_mask="Encoder_Q.conv1_p.weight" in state,
    )


def _normalisation(state: dict, channels: int) -> dict:
    """Return mean and std from the encoder buffers, else ImageNet's for 3-channel input."""
    mean, std = state.get("Encoder_Q.mean"), state.get("Encoder_Q.std")
    if mean is not None and std is not None and mean.numel() == std.numel() == channels:
        return dict(
            mean=tuple(round(float(v), 6) for v in mean.flatten()),
            std=tuple(round(float(v), 6) for v in std.flatten()),
        )
    return dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _published_layout(config: NetworkConfig) -> str:
    differences = _differing_fields(config, reference_config("plain"))
    if not differences <= {"second_mask", "aspp", "quality", "mean", "std"}:
        return "custom"
    if config.quality == "compact":
        return "custom"
    if config.second_mask == "o":
        return "stm_original"
    if config.quality == "saq":
        return "mem3d_saq"
    return "mem3d_aspp" if config.aspp else "mem3d_plain"


def _published_metadata(config: NetworkConfig, layout: str, fields: dict) -> dict:
    """Describe the preprocessing of the published inference code.

    The grey slice is repeated to the image channels, scaled to [0, 1] and normalised with the
    network's mean and std buffers (ImageNet statistics in the published files).
    """
    return {
        "normalisation": "published",
        "image_channels": config.image_channels,
        "intensity_range": [0.0, 1.0],
        "mean": list(config.mean),
        "std": list(config.std),
        "input_size": config.input_size,
        "layout": layout,
        "checkpoint_fields": fields,
    }


# --- Building the network and copying tensors ----------------------------------------------------


def _build_network(checkpoint: _Checkpoint, path: Path) -> tuple[STM, LoadReport]:
    state = checkpoint.state
    network = _network_without_incomplete_head(checkpoint.config, state)
    expected = network.state_dict()
    _check_shapes(expected, state, path)
    missing = [name for name in expected if name not in state and not _is_counter(name)]
    unexpected = [name for name in state if name not in expected]
    _check_core_weights(missing, path)
    if missing:
        logger.warning("%s lacks %d tensors, left at their initial values: %s",
                       path, len(missing), ", ".join(missing[:10]))
    if unexpected:
        logger.warning("%s has %d tensors that this network does not use: %s",
                       path, len(unexpected), ", ".join(unexpected[:10]))
    matched = {name: tensor for name, tensor in state.items() if name in expected}
    network.load_state_dict(matched, strict=False)
    report = LoadReport(
        checkpoint.layout, count_parameters(network), len(matched), missing, unexpected,
        checkpoint.wrapper,
    )
    return network, report


def _network_without_incomplete_head(config: NetworkConfig, state: dict) -> STM:
    """Build the network, leaving out a quality head that the file contains only in part.

    A partly loaded head would output noise, so its tensors become unexpected names instead.
    """
    network = STM(config)
    head = [name for name in network.state_dict() if name.startswith(QUALITY_PREFIXES)]
    absent = [name for name in head if name not in state and not _is_counter(name)]
    if not absent:
        return network
    logger.warning(
        "the quality head is incomplete (%d of %d tensors missing, e.g. %s), so it is left out",
        len(absent), len(head), absent[0],
    )
    return STM(dataclasses.replace(config, quality="none"))


def _is_counter(name: str) -> bool:
    """Return whether `name` is a BatchNorm batch counter, which inference never reads."""
    return name.endswith("num_batches_tracked")


def _check_shapes(expected: dict, state: dict, path: Path) -> None:
    wrong = [
        f"{name} {list(state[name].shape)} (expected {list(tensor.shape)})"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]
    if wrong:
        raise Mem3DError(
            f"{path} does not match the network it describes: {len(wrong)} tensors have other "
            f"shapes, e.g. {'; '.join(wrong[:5])}. The file is damaged or contains another network."
        )


def _check_core_weights(missing: list, path: Path) -> None:
    core = [
        name for name in missing
        if name.startswith(CORE_PREFIXES) and name not in NORMALISATION_BUFFERS
    ]
    if core:
        raise Mem3DError(
            f"{path} lacks {len(core)} core weights of the network, e.g. {', '.join(core[:5])}; "
            "it is not loaded because the network would output noise. Use a complete checkpoint."
        )


def _move_to_device(network: STM, device, path: Path) -> STM:
    try:
        return network.to(device)
    except (RuntimeError, AssertionError) as error:  # AssertionError: torch built without CUDA
        raise Mem3DError(
            f"cannot move the model {path.name} to device {device!r}: {error}; use device 'cpu'"
        ) from error


# --- Cache of loaded models ----------------------------------------------------------------------

_cache: dict = {}
_cache_lock = threading.Lock()


def get_model(path, device="cpu") -> LoadedModel:
    """Return the loaded model for `path` on `device`, loading it on first use.

    The cache keeps one instance per (resolved path, modification time, size, device), so a
    rewritten file is loaded again and its older instance is released.
    """
    resolved = Path(path).resolve()
    try:
        device = str(torch.device(device))
    except RuntimeError as error:
        raise Mem3DError(f"invalid device {device!r}: {error}") from error
    try:
        status = resolved.stat()
    except OSError:
        return load_model(resolved, device)  # raises the "not found" or "cannot read" error
    key = (str(resolved), status.st_mtime_ns, status.st_size, device)
    with _cache_lock:
        if key not in _cache:
            for stale in [k for k in _cache if k[0] == key[0] and k[3] == device]:
                del _cache[stale]
            _cache[key] = load_model(resolved, device)
        return _cache[key]


def unload_models() -> None:
    """Release every cached model and, where CUDA is available, its cached GPU memory."""
    with _cache_lock:
        count = len(_cache)
        _cache.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    logger.info("released %d cached models", count)
