"""Loading published STM/Mem3D checkpoints and the project's safetensors format.

The published layouts are rebuilt from their key tables (name, shape, param or buffer) in
Testing/data/checkpoint_keys, filled with random values and written with torch.save in the
wrappers that published files use.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from mem3d import checkpoints
from mem3d.checkpoints import get_model, load_model, save_model, unload_models
from mem3d.cli import main
from mem3d.errors import Mem3DError
from mem3d.network import STM, NetworkConfig, compact_config, count_parameters
from safetensors import safe_open
from safetensors.torch import save_file

torch.set_num_threads(1)

KEY_TABLES = Path(__file__).parent / "data" / "checkpoint_keys"
LAYOUTS = ("stm_original", "mem3d_plain", "mem3d_aspp", "mem3d_saq")
VARIANTS = {
    "stm_original": dict(second_mask="o", aspp=False, quality="none"),
    "mem3d_plain": dict(second_mask="bg", aspp=False, quality="none"),
    "mem3d_aspp": dict(second_mask="bg", aspp=True, quality="none"),
    "mem3d_saq": dict(second_mask="bg", aspp=True, quality="saq"),
}
# Every layout and every wrapper at least once; the stm_original table already has `module.`.
PUBLISHED_CASES = [
    ("stm_original", ("bare",)),
    ("mem3d_plain", ("bare",)),
    ("mem3d_plain", ("module", "state_dict", "legacy")),
    ("mem3d_aspp", ("state_dict",)),
    ("mem3d_saq", ("legacy",)),
]
WRAPPER_TEXT = {
    "bare": "bare state dict",
    "module": "module. prefix",
    "state_dict": "state_dict wrapper",
    "legacy": "legacy serialization",
}


class TrainingSettings:
    """A custom class that weights-only unpickling must reject."""

    def __init__(self):
        self.learning_rate = 1e-5


@pytest.fixture(scope="module")
def key_tables() -> dict:
    if not KEY_TABLES.is_dir():
        pytest.skip(f"key tables not found in {KEY_TABLES}")
    tables = {}
    for layout in LAYOUTS:
        rows = []
        for line in (KEY_TABLES / f"{layout}.tsv").read_text().splitlines():
            name, shape, kind = line.split("\t")
            rows.append((name, json.loads(shape), kind))
        tables[layout] = rows
    return tables


@pytest.fixture(autouse=True)
def empty_model_cache():
    yield
    unload_models()


def random_state(rows, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape, _ in rows:
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        else:
            state[name] = torch.randn(shape, generator=generator)
    return state


def write_checkpoint(path: Path, state: dict, wrappers=("bare",)) -> None:
    """Write `state` with torch.save in the given wrappers ("module", "state_dict", "legacy")."""
    if "module" in wrappers:
        state = {f"module.{name}": tensor for name, tensor in state.items()}
    content = state
    if "state_dict" in wrappers:
        optimizer = {
            "state": {0: {"momentum_buffer": torch.zeros(3)}},
            "param_groups": [{"lr": 1e-5, "momentum": 0.9, "params": [0]}],
        }
        content = {"epoch": 12, "state_dict": state, "loss": 0.25, "optimizer": optimizer,
                   "max_skip": 5}
    torch.save(content, path, _use_new_zipfile_serialization="legacy" not in wrappers)


def small_config(**changes) -> NetworkConfig:
    """A bottleneck network small enough to build and save in a fraction of a second."""
    values = dict(stem_channels=8, widths=(4, 8, 16), depths=(1, 2, 1), key_channels=8,
                  value_channels=16, decoder_channels=8, input_size=512)
    values.update(changes)
    return NetworkConfig(**values)


def small_state(**changes) -> dict:
    return dict(STM(small_config(**changes)).state_dict())


@pytest.fixture(scope="module")
def small_saq_state() -> dict:
    """State of a small network with ASPP and Mem3D's full-size quality head (about 15 M)."""
    return small_state(aspp=True, quality="saq")


def png_bytes() -> bytes:
    """Return a valid 1x1 grey PNG image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x80")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(
        b"IEND", b""
    )


# --- Published layouts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout, wrappers",
    PUBLISHED_CASES,
    ids=[f"{layout}-{'+'.join(wrappers)}" for layout, wrappers in PUBLISHED_CASES],
)
def test_published_layout_loads_every_tensor(tmp_path, key_tables, layout, wrappers):
    rows = key_tables[layout]
    state = random_state(rows, seed=len(rows))
    path = tmp_path / f"{layout}.pth"
    write_checkpoint(path, state, wrappers)

    loaded = load_model(path)
    report = loaded.report

    assert report.layout == layout
    assert report.loaded == len(rows)
    assert report.missing == []
    assert report.unexpected == []
    assert report.parameters == sum(
        int(np.prod(shape)) for _, shape, kind in rows if kind == "param"
    )
    for setting, value in VARIANTS[layout].items():
        assert getattr(loaded.network.config, setting) == value, setting
    for wrapper in wrappers:
        assert WRAPPER_TEXT[wrapper] in report.wrapper
    if layout == "stm_original":
        assert WRAPPER_TEXT["module"] in report.wrapper
    assert not loaded.network.training
    assert loaded.metadata["normalisation"] == "published"

    network_state = loaded.network.state_dict()
    for name, tensor in state.items():
        assert torch.equal(network_state[name.removeprefix("module.")], tensor), name


def test_published_metadata_and_numpy_fields(tmp_path):
    state = small_state()
    path = tmp_path / "trained.pth"
    content = {"epoch": 4, "state_dict": state, "max_jaccard": np.float64(0.75),
               "minloss": torch.tensor(0.125), "optimizer": {"state": {}, "param_groups": []}}
    torch.save(content, path, _use_new_zipfile_serialization=False)

    metadata = load_model(path).metadata

    assert metadata["normalisation"] == "published"
    assert metadata["image_channels"] == 3
    assert metadata["intensity_range"] == [0.0, 1.0]
    assert metadata["mean"] == [0.485, 0.456, 0.406]
    assert metadata["std"] == [0.229, 0.224, 0.225]
    assert metadata["checkpoint_fields"] == {"epoch": 4, "max_jaccard": 0.75, "minloss": 0.125}


@pytest.mark.parametrize("wrapper_key", ["model", "network"])
def test_other_wrapper_keys_load(tmp_path, wrapper_key):
    state = small_state()
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper_key: state, "step": 100}, path)

    report = load_model(path).report

    assert report.wrapper == f"{wrapper_key} wrapper"
    assert report.loaded == len(state)


def test_widths_inferred_from_shapes(tmp_path):
    config = small_config(aspp=True)
    network = STM(config)
    path = tmp_path / "small.pth"
    torch.save(network.state_dict(), path)

    loaded = load_model(path)

    assert loaded.network.config == config
    assert loaded.report.layout == "custom"
    assert loaded.report.parameters == count_parameters(network)


def test_compact_layout_in_torch_file(tmp_path):
    config = compact_config()
    state = STM(config).state_dict()
    path = tmp_path / "compact.pth"
    torch.save({"network": state}, path)

    loaded = load_model(path)

    assert loaded.network.config == dataclasses.replace(config, input_size=512)
    assert loaded.report.missing == []
    assert loaded.report.unexpected == []


# --- Partial files -------------------------------------------------------------------------------


def test_missing_quality_head_loads_aspp_variant(tmp_path, small_saq_state):
    head = ("conv1.", "res5.", "fc.", "fc2.")
    state = {k: v for k, v in small_saq_state.items() if not k.startswith(head)}
    path = tmp_path / "no_head.pth"
    torch.save(state, path)

    loaded = load_model(path)

    assert loaded.network.config.aspp
    assert loaded.network.config.quality == "none"
    assert loaded.report.loaded == len(state)
    assert loaded.report.missing == []
    assert loaded.report.unexpected == []


def test_missing_quality_head_loads_plain_variant(tmp_path):
    head = ("conv1.", "res5.", "fc.", "fc2.")
    state = {k: v for k, v in small_state(quality="saq").items() if not k.startswith(head)}
    path = tmp_path / "plain.pth"
    torch.save(state, path)

    loaded = load_model(path)

    assert not loaded.network.config.aspp
    assert loaded.network.config.quality == "none"
    assert loaded.report.loaded == len(state)
    assert loaded.report.missing == []


def test_partial_quality_head_left_out(tmp_path, small_saq_state):
    state = {k: v for k, v in small_saq_state.items() if not k.startswith("fc2.")}
    path = tmp_path / "partial_head.pth"
    torch.save(state, path)

    loaded = load_model(path)

    assert loaded.network.config.quality == "none"
    assert loaded.report.missing == []
    assert "res5.0.conv1.weight" in loaded.report.unexpected
    assert "fc.weight" in loaded.report.unexpected
    assert "conv1.weight" in loaded.report.unexpected
    assert not hasattr(loaded.network, "fc2")


def test_missing_core_weights_rejected(tmp_path):
    state = small_state()
    removed = [k for k in state if k.startswith("Decoder.RF2.")]
    for name in removed:
        del state[name]
    path = tmp_path / "no_rf2.pth"
    torch.save(state, path)

    with pytest.raises(Mem3DError) as raised:
        load_model(path)

    message = str(raised.value)
    assert "no_rf2.pth" in message
    assert f"lacks {len(removed)} core weights" in message
    assert "Decoder.RF2.convFS.weight" in message


def test_missing_counters_and_buffers_allowed(tmp_path):
    state = small_state()
    normalisation = list(checkpoints.NORMALISATION_BUFFERS)
    state = {
        k: v for k, v in state.items()
        if not k.endswith("num_batches_tracked") and k not in normalisation
    }
    path = tmp_path / "no_counters.pth"
    torch.save(state, path)

    report = load_model(path).report

    assert sorted(report.missing) == sorted(normalisation)
    assert report.loaded == len(state)


def test_shape_mismatch_rejected(tmp_path):
    state = small_state()
    state["Decoder.RF3.convFS.weight"] = torch.zeros(8, 5, 3, 3)
    path = tmp_path / "mismatch.pth"
    torch.save(state, path)

    with pytest.raises(Mem3DError) as raised:
        load_model(path)

    assert "mismatch.pth" in str(raised.value)
    assert "Decoder.RF3.convFS.weight" in str(raised.value)


# --- Rejected files ------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_custom_class_rejected(tmp_path, legacy):
    path = tmp_path / "with_class.pth"
    content = {"state_dict": small_state(), "settings": TrainingSettings()}
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)

    with pytest.raises(Mem3DError) as raised:
        load_model(path)

    message = str(raised.value)
    assert "with_class.pth" in message
    assert "TrainingSettings" in message
    assert "not loaded for safety" in message


def test_pickled_module_rejected(tmp_path):
    path = tmp_path / "whole_network.pth"
    torch.save(STM(small_config()), path)

    with pytest.raises(Mem3DError, match="Python code or objects"):
        load_model(path)


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_truncated_file_rejected(tmp_path, kind):
    network = STM(small_config())
    path = tmp_path / f"truncated_{kind}.bin"
    if kind == "safetensors":
        save_model(network, path, {})
    else:
        torch.save(network.state_dict(), path, _use_new_zipfile_serialization=kind == "zip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(Mem3DError) as raised:
        load_model(path)

    assert path.name in str(raised.value)
    assert "truncated or corrupt" in str(raised.value)


def test_empty_file_rejected(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")

    with pytest.raises(Mem3DError) as raised:
        load_model(path)

    assert "empty.pth" in str(raised.value)
    assert "empty (0 bytes)" in str(raised.value)


def test_png_rejected(tmp_path):
    path = tmp_path / "slice.pth"
    path.write_bytes(png_bytes())

    with pytest.raises(Mem3DError) as raised:
        load_model(path)

    assert "slice.pth" in str(raised.value)
    assert "PNG image" in str(raised.value)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(Mem3DError, match="not found"):
        load_model(tmp_path / "absent.pth")


@pytest.mark.parametrize("kind", ["torch", "safetensors"])
def test_other_network_rejected(tmp_path, kind):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    path = tmp_path / f"classifier.{kind}"
    if kind == "torch":
        torch.save(other.state_dict(), path)
    else:
        save_file(dict(other.state_dict()), str(path))

    with pytest.raises(Mem3DError) as raised:
        load_model(path)

    assert path.name in str(raised.value)
    assert "does not contain an STM network" in str(raised.value)


@pytest.mark.parametrize(
    "content", [[torch.zeros(2)], {"epoch": 3, "weights": [1.0, 2.0]}], ids=["list", "dict"]
)
def test_content_without_state_dict_rejected(tmp_path, content):
    path = tmp_path / "no_state.pth"
    torch.save(content, path)

    with pytest.raises(Mem3DError) as raised:
        load_model(path)

    assert "no_state.pth" in str(raised.value)
    assert "no state dict" in str(raised.value)


# --- The project's format ------------------------------------------------------------------------


def project_metadata() -> dict:
    return {
        "name": "mem3d-compact",
        "normalisation": "crop-window",
        "training": {"steps": 10, "hardware": "CPU"},
        "validation": {"dice": 0.8},
    }


def test_own_format_round_trip_exact(tmp_path):
    network = STM(compact_config())
    path = tmp_path / "model.safetensors"

    save_model(network, path, project_metadata(), half=False)
    loaded = load_model(path)

    expected_metadata = {
        "format_version": 1,
        "network": json.loads(json.dumps(compact_config().to_dict())),
        **project_metadata(),
    }
    assert loaded.metadata == expected_metadata
    assert loaded.network.config == compact_config()
    assert loaded.report.layout == "mem3d-compact"
    assert loaded.report.wrapper == "safetensors"
    assert loaded.report.loaded == len(network.state_dict())
    assert loaded.report.missing == []
    assert loaded.report.unexpected == []
    for name, tensor in network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[name], tensor), name


def test_own_format_half_precision(tmp_path):
    network = STM(compact_config())
    half_path = tmp_path / "half.safetensors"
    full_path = tmp_path / "full.safetensors"

    save_model(network, half_path, {})
    save_model(network, full_path, {}, half=False)
    loaded = load_model(half_path)

    with safe_open(str(half_path), framework="pt") as file:
        assert file.get_tensor("Encoder_Q.conv1.weight").dtype == torch.float16
        assert file.get_tensor("Encoder_Q.bn1.running_var").dtype == torch.float32
    assert half_path.stat().st_size < 0.6 * full_path.stat().st_size
    weight = network.state_dict()["Decoder.pred2.weight"]
    loaded_weight = loaded.network.state_dict()["Decoder.pred2.weight"]
    assert loaded_weight.dtype == torch.float32
    assert torch.equal(loaded_weight, weight.half().float())


def test_own_format_other_architecture(tmp_path):
    path = tmp_path / "small.safetensors"
    save_model(STM(small_config()), path, {})

    loaded = load_model(path)

    assert loaded.report.layout == "own"
    assert loaded.network.config == small_config()


def test_save_interrupted_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"previous")

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half of a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_model(STM(small_config()), path, {})

    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert path.read_bytes() == b"previous"


def test_save_rejects_reserved_metadata(tmp_path):
    with pytest.raises(ValueError, match="format_version"):
        save_model(STM(small_config()), tmp_path / "m.safetensors", {"format_version": 7})


def test_newer_format_version_rejected(tmp_path):
    path = tmp_path / "future.safetensors"
    header = {"format_version": 99, "network": small_config().to_dict()}
    save_file(dict(STM(small_config()).state_dict()), str(path),
              metadata={"mem3d": json.dumps(header)})

    with pytest.raises(Mem3DError) as raised:
        load_model(path)

    assert "future.safetensors" in str(raised.value)
    assert "update mem3d" in str(raised.value)


def test_unknown_network_setting_rejected(tmp_path):
    path = tmp_path / "unknown.safetensors"
    header = {"format_version": 1, "network": {**small_config().to_dict(), "heads": 4}}
    save_file(dict(STM(small_config()).state_dict()), str(path),
              metadata={"mem3d": json.dumps(header)})

    with pytest.raises(Mem3DError, match="invalid network description"):
        load_model(path)


# --- Cache ---------------------------------------------------------------------------------------


def test_get_model_reuses_loaded_instance(tmp_path):
    path = tmp_path / "cached.safetensors"
    save_model(STM(small_config()), path, {})

    first = get_model(path)
    second = get_model(str(path))
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 2_000_000_000))
    after_change = get_model(path)
    unload_models()
    after_unload = get_model(path)

    assert second is first
    assert after_change is not first
    assert after_unload is not after_change


# --- Command line --------------------------------------------------------------------------------


def test_models_info_prints_report(tmp_path, capsys):
    network = STM(compact_config())
    path = tmp_path / "model.safetensors"
    save_model(network, path, project_metadata())

    code = main(["models", "info", str(path)])
    output = capsys.readouterr().out

    assert code == 0
    assert f"file: {path}" in output
    assert "layout: mem3d-compact" in output
    assert "wrapper: safetensors" in output
    assert f"parameters: {count_parameters(network):,}" in output
    assert f"tensors loaded: {len(network.state_dict())}" in output
    assert "tensors missing: 0" in output
    assert "tensors unexpected: 0" in output
    assert '"format_version": 1' in output
    assert '"dice": 0.8' in output


def test_models_info_reports_error(tmp_path, capsys):
    path = tmp_path / "picture.pth"
    path.write_bytes(png_bytes())

    code = main(["models", "info", str(path)])
    error = capsys.readouterr().err

    assert code == 2
    assert error.startswith("mem3d: error:")
    assert "picture.pth" in error
