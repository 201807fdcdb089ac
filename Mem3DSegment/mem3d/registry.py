"""Named models: the model embedded in the package and published weights fetched into a cache.

A model is given either by a registry name or by the path of a checkpoint file. Downloads go to
a temporary folder inside the cache folder, are validated by loading them, and are then renamed
into place, so the cache never contains a partial or unusable file.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import Mem3DError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "mem3d-compact"
CACHE_DIR_VARIABLE = "MEM3D_CACHE_DIR"
MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class _ModelSource:
    name: str
    description: str
    filename: str
    url: str | None = None  # None: the file ships inside the package


_SOURCES = {
    source.name: source
    for source in (
        _ModelSource(
            DEFAULT_MODEL,
            "compact STM network trained by the mem3d project; the default model",
            "mem3d-compact.safetensors",
        ),
        _ModelSource(
            "vmn-youtube-vos",
            "Mem3D's volumetric memory network (ResNet-50 STM) pretrained on YouTube-VOS "
            "videos, not on medical images",
            "vmn-youtube-vos.pth",
            "https://drive.google.com/uc?id=1nzhFYOJx3rzvnO8o6g-D1MMA6iQ4VYpw",
        ),
    )
}


@dataclass
class ModelEntry:
    """A registry model and where its file is."""

    name: str
    description: str
    source: str  # "embedded in the mem3d package" or the download URL
    path: Path
    available: bool
    size: int | None  # file size in bytes, None when the file is absent


def cache_dir() -> Path:
    """Return the folder for downloaded models, without creating it.

    $MEM3D_CACHE_DIR overrides the per-user default: `%LOCALAPPDATA%\\mem3d` on Windows,
    `~/Library/Caches/mem3d` on macOS and `$XDG_CACHE_HOME/mem3d` (default `~/.cache/mem3d`)
    elsewhere.
    """
    configured = os.environ.get(CACHE_DIR_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "mem3d"


def model_names() -> list[str]:
    return list(_SOURCES)


def model_path(name: str) -> Path:
    """Return where the file of registry model `name` is or will be after download."""
    source = _source(name)
    folder = MODELS_DIR if source.url is None else cache_dir()
    return folder / source.filename


def list_models() -> list[ModelEntry]:
    entries = []
    for source in _SOURCES.values():
        path = model_path(source.name)
        available = path.is_file()
        entries.append(ModelEntry(
            name=source.name,
            description=source.description,
            source=source.url or "embedded in the mem3d package",
            path=path,
            available=available,
            size=path.stat().st_size if available else None,
        ))
    return entries


def resolve_model(name_or_path) -> Path:
    """Return the checkpoint file for a registry name or an existing file path."""
    text = str(name_or_path)
    if text in _SOURCES:
        return _registry_file(text)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise Mem3DError(f"{path} is a folder, not a model file")
    raise Mem3DError(
        f"{text!r} is neither a model name nor an existing file; model names: "
        f"{', '.join(_SOURCES)}"
    )


def _registry_file(name: str) -> Path:
    path = model_path(name)
    if path.is_file():
        return path
    source = _SOURCES[name]
    if source.url is None:
        raise Mem3DError(
            f"the embedded model file {path} is missing, so the mem3d installation is "
            "incomplete; reinstall mem3d, or pass the path of a model file instead"
        )
    raise Mem3DError(
        f"model {name!r} is not downloaded yet; run `mem3d models download {name}`, or "
        f"download {source.url} in a browser and save the file as {path}"
    )


def _source(name: str) -> _ModelSource:
    try:
        return _SOURCES[name]
    except KeyError:
        raise Mem3DError(
            f"unknown model name {name!r}; model names: {', '.join(_SOURCES)}"
        ) from None


# --- Download ------------------------------------------------------------------------------------


def download_model(
    name: str, progress: bool = True, downloader: Callable | None = None
) -> Path:
    """Download registry model `name` into the cache folder and return its path.

    `downloader(url, output_path)` writes the file; the default uses gdown. The file is
    validated with `load_model` before it replaces any earlier download. On any failure,
    KeyboardInterrupt included, the temporary folder and every partial file are removed.
    """
    source = _source(name)
    if source.url is None:
        raise Mem3DError(f"model {name!r} ships with mem3d and cannot be downloaded")
    target = model_path(name)
    _create_folder(target.parent)
    fetch = downloader or functools.partial(_download_with_gdown, progress=progress)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", suffix=".download", dir=target.parent))
    try:
        partial_file = staging / target.name
        _fetch(fetch, source.url, partial_file, target)
        _validate_download(partial_file, source.url, target)
        os.replace(partial_file, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("downloaded %s from %s to %s", name, source.url, target)
    return target


def _create_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Mem3DError(
            f"cannot create the model cache folder {folder}: {error.strerror or error}; "
            f"set {CACHE_DIR_VARIABLE} to a writable folder"
        ) from error


def _download_with_gdown(url: str, output: Path, progress: bool = True) -> None:
    import gdown

    result = gdown.download(url, output=str(output), quiet=not progress)
    if result is None:  # gdown 5 returns None instead of raising on some failures
        raise RuntimeError("gdown did not download the file")


def _fetch(fetch: Callable, url: str, output: Path, target: Path) -> None:
    try:
        fetch(url, output)
    # Downloaders raise many types (requests, gdown, OSError), so any Exception is a failed
    # download; KeyboardInterrupt is not an Exception and propagates after the cleanup.
    except Exception as error:
        logger.debug("download from %s failed: %s", url, error)
        raise Mem3DError(
            f"download from {url} failed ({type(error).__name__}: {error}). Without internet "
            f"access, download the file in a browser and save it as {target}"
        ) from error
    if not output.is_file() or output.stat().st_size == 0:
        raise Mem3DError(
            f"download from {url} produced no data; download the file in a browser and save "
            f"it as {target}"
        )


def _validate_download(output: Path, url: str, target: Path) -> None:
    try:
        from .checkpoints import load_model  # imports torch; listing models must not

        loaded = load_model(output)
    except Mem3DError as error:
        raise Mem3DError(
            f"the file downloaded from {url} is not a usable checkpoint and was deleted: "
            f"{error}. Download it in a browser and save it as {target}"
        ) from error
    logger.info("validated the download: layout %s, %d tensors",
                loaded.report.layout, loaded.report.loaded)
