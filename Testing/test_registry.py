"""Model registry: cache folder, name resolution and downloads through local fake downloaders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from mem3d import registry
from mem3d.checkpoints import load_model, save_model
from mem3d.cli import main
from mem3d.errors import Mem3DError
from mem3d.network import STM, NetworkConfig, compact_config

torch.set_num_threads(1)

VMN = "vmn-youtube-vos"
VMN_URL = "https://drive.google.com/uc?id=1nzhFYOJx3rzvnO8o6g-D1MMA6iQ4VYpw"
SMALL_CONFIG = NetworkConfig(stem_channels=8, widths=(4, 8, 16), depths=(1, 1, 1),
                             key_channels=8, value_channels=16, decoder_channels=8)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MEM3D_CACHE_DIR", str(folder))
    return folder


def write_training_checkpoint(url: str, output) -> None:
    """Write what Mem3D training saves: legacy format, state_dict wrapper, module. prefix."""
    state = {f"module.{name}": tensor for name, tensor in STM(SMALL_CONFIG).state_dict().items()}
    content = {"epoch": 20, "state_dict": state, "loss": 0.1, "optimizer": {}, "max_skip": 5}
    torch.save(content, output, _use_new_zipfile_serialization=False)


def write_half_then_fail(url: str, output) -> None:
    write_training_checkpoint(url, output)
    data = Path(output).read_bytes()
    Path(output).write_bytes(data[: len(data) // 2])
    raise ConnectionError("connection reset by peer")


# --- Cache folder --------------------------------------------------------------------------------


def test_cache_dir_environment_override(cache):
    assert registry.cache_dir() == cache


def test_cache_dir_linux_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MEM3D_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    default = registry.cache_dir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with_xdg = registry.cache_dir()

    assert default == tmp_path / ".cache" / "mem3d"
    assert with_xdg == tmp_path / "xdg" / "mem3d"


def test_cache_dir_windows_and_macos(tmp_path, monkeypatch):
    monkeypatch.delenv("MEM3D_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))

    monkeypatch.setattr(sys, "platform", "win32")
    windows = registry.cache_dir()
    monkeypatch.setattr(sys, "platform", "darwin")
    macos = registry.cache_dir()

    assert windows == tmp_path / "local" / "mem3d"
    assert macos == tmp_path / "Library" / "Caches" / "mem3d"


# --- Listing and resolving -----------------------------------------------------------------------


def test_list_models_before_download(cache):
    entries = {entry.name: entry for entry in registry.list_models()}

    assert list(entries) == [registry.DEFAULT_MODEL, VMN]
    assert entries[VMN].path == cache / "vmn-youtube-vos.pth"
    assert entries[VMN].source == VMN_URL
    assert entries[VMN].available is False
    assert entries[VMN].size is None


def test_resolve_existing_file(tmp_path):
    path = tmp_path / "my_model.pth"
    write_training_checkpoint("", path)

    assert registry.resolve_model(str(path)) == path


def test_resolve_unknown_name_lists_names(cache):
    with pytest.raises(Mem3DError) as raised:
        registry.resolve_model("stm-davis")

    assert "'stm-davis'" in str(raised.value)
    assert registry.DEFAULT_MODEL in str(raised.value)
    assert VMN in str(raised.value)


def test_resolve_folder_rejected(tmp_path):
    with pytest.raises(Mem3DError, match="is a folder"):
        registry.resolve_model(tmp_path)


def test_resolve_not_downloaded_gives_hint(cache):
    with pytest.raises(Mem3DError) as raised:
        registry.resolve_model(VMN)

    message = str(raised.value)
    assert "mem3d models download vmn-youtube-vos" in message
    assert VMN_URL in message
    assert str(cache / "vmn-youtube-vos.pth") in message


def test_resolve_embedded_model_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path / "models")

    with pytest.raises(Mem3DError) as raised:
        registry.resolve_model(registry.DEFAULT_MODEL)

    assert "installation is incomplete" in str(raised.value)
    assert str(tmp_path / "models" / "mem3d-compact.safetensors") in str(raised.value)


def test_resolve_embedded_model_present(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path)
    path = tmp_path / "mem3d-compact.safetensors"
    save_model(STM(compact_config()), path, {"name": "mem3d-compact"})

    resolved = registry.resolve_model(registry.DEFAULT_MODEL)
    entry = registry.list_models()[0]

    assert resolved == path
    assert entry.available is True
    assert entry.size == path.stat().st_size


# --- Download ------------------------------------------------------------------------------------


def test_download_places_validated_file(cache):
    requested = []

    def downloader(url, output):
        requested.append(url)
        write_training_checkpoint(url, output)

    path = registry.download_model(VMN, downloader=downloader)

    assert requested == [VMN_URL]
    assert path == cache / "vmn-youtube-vos.pth"
    assert os.listdir(cache) == ["vmn-youtube-vos.pth"]
    assert registry.resolve_model(VMN) == path
    assert load_model(path).report.missing == []
    assert registry.list_models()[1].available is True


def test_download_failure_leaves_no_file(cache):
    with pytest.raises(Mem3DError) as raised:
        registry.download_model(VMN, downloader=write_half_then_fail)

    message = str(raised.value)
    assert VMN_URL in message
    assert str(cache / "vmn-youtube-vos.pth") in message
    assert "connection reset by peer" in message
    assert os.listdir(cache) == []


def test_download_interrupt_leaves_no_file(cache):
    def interrupted(url, output):
        Path(output).write_bytes(b"\x80\x02partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        registry.download_model(VMN, downloader=interrupted)

    assert os.listdir(cache) == []


def test_download_of_error_page_rejected(cache):
    def error_page(url, output):
        Path(output).write_text("<!DOCTYPE html><html>Quota exceeded</html>")

    with pytest.raises(Mem3DError) as raised:
        registry.download_model(VMN, downloader=error_page)

    assert "not a usable checkpoint" in str(raised.value)
    assert "HTML" in str(raised.value)
    assert os.listdir(cache) == []


def test_download_without_data_rejected(cache):
    with pytest.raises(Mem3DError, match="produced no data"):
        registry.download_model(VMN, downloader=lambda url, output: None)

    assert os.listdir(cache) == []


def test_failed_download_keeps_earlier_file(cache):
    path = registry.download_model(VMN, downloader=write_training_checkpoint)
    earlier = path.read_bytes()

    with pytest.raises(Mem3DError):
        registry.download_model(VMN, downloader=write_half_then_fail)

    assert os.listdir(cache) == ["vmn-youtube-vos.pth"]
    assert path.read_bytes() == earlier


def test_download_rejects_embedded_and_unknown_names(cache):
    with pytest.raises(Mem3DError, match="cannot be downloaded"):
        registry.download_model(registry.DEFAULT_MODEL, downloader=write_training_checkpoint)
    with pytest.raises(Mem3DError, match="unknown model name"):
        registry.download_model("stm-davis", downloader=write_training_checkpoint)


def test_default_downloader_calls_gdown(cache, monkeypatch):
    import gdown

    calls = []

    def fake_gdown(url, output=None, quiet=False, **options):
        calls.append((url, quiet))
        write_training_checkpoint(url, output)
        return output

    monkeypatch.setattr(gdown, "download", fake_gdown)
    path = registry.download_model(VMN, progress=False)

    assert calls == [(VMN_URL, True)]
    assert path.is_file()


def test_default_downloader_failure(cache, monkeypatch):
    import gdown

    monkeypatch.setattr(gdown, "download", lambda url, output=None, quiet=False: None)

    with pytest.raises(Mem3DError, match="gdown did not download the file"):
        registry.download_model(VMN)

    assert os.listdir(cache) == []


# --- Command line --------------------------------------------------------------------------------


def test_models_list_command(cache, capsys):
    code = main(["models", "list"])
    output = capsys.readouterr().out

    assert code == 0
    assert f"cache folder: {cache}" in output
    assert "vmn-youtube-vos: not downloaded" in output
    assert registry.DEFAULT_MODEL in output


def test_models_download_command(cache, capsys, monkeypatch):
    import gdown

    def fake_gdown(url, output=None, quiet=False, **options):
        write_training_checkpoint(url, output)
        return output

    monkeypatch.setattr(gdown, "download", fake_gdown)
    code = main(["models", "download", VMN, "--quiet"])
    output = capsys.readouterr().out

    assert code == 0
    assert f"saved {VMN} to {cache / 'vmn-youtube-vos.pth'}" in output


def test_models_info_of_missing_download(cache, capsys):
    code = main(["models", "info", VMN])
    error = capsys.readouterr().err

    assert code == 2
    assert "mem3d models download vmn-youtube-vos" in error
