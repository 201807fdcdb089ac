"""Model settings and model downloads for the Slicer module, without Qt and without torch.

The module panel stores a model choice ("default", a registry name or "file"), a device and a
cache folder. Downloads run the engine's `mem3d models download` command in a separate process,
so the application stays responsive, can show the progress bar that the command prints and can
cancel the download by ending the process.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Model choices of the settings panel. "default" is the model embedded in the engine package,
# and "file" uses the path of a checkpoint file. Registry names go to the engine unchanged.
MODEL_CHOICE_DEFAULT = "default"
MODEL_CHOICE_FILE = "file"
PUBLISHED_MODEL_NAME = "vmn-youtube-vos"  # the engine's registry name of the published weights
MODEL_CHOICES = (MODEL_CHOICE_DEFAULT, PUBLISHED_MODEL_NAME, MODEL_CHOICE_FILE)
DEVICE_CHOICES = ("auto", "cpu", "cuda")

# The engine reads its cache folder from this environment variable (mem3d.registry.cache_dir).
CACHE_DIR_VARIABLE = "MEM3D_CACHE_DIR"

# Keys of the module's settings in Slicer's application settings (QSettings).
SETTINGS_MODEL_CHOICE = "Mem3DSegment/ModelChoice"
SETTINGS_MODEL_FILE = "Mem3DSegment/ModelFile"
SETTINGS_DEVICE = "Mem3DSegment/Device"
SETTINGS_CACHE_FOLDER = "Mem3DSegment/CacheFolder"

# tqdm, which gdown uses, prints "NN%|" at the start of each progress bar update.
_PERCENT_PATTERN = re.compile(r"(\d{1,3})%\|")


@dataclass
class EngineSettings:
    """The model and device that previews use, as the module panel sets them."""

    modelChoice: str = MODEL_CHOICE_DEFAULT  # one of MODEL_CHOICES
    modelFile: str = ""  # checkpoint path, used when modelChoice is "file"
    device: str = "auto"  # one of DEVICE_CHOICES
    cacheFolder: str = ""  # folder for downloaded models, empty for the engine's per-user default

    @property
    def model(self) -> str | None:
        return modelForSettings(self.modelChoice, self.modelFile)


def readSettings(store) -> EngineSettings:
    """Read EngineSettings from an object with `value(key, default)`, such as qt.QSettings()."""

    def text(key: str, default: str) -> str:
        value = store.value(key, default)
        return default if value is None else str(value)

    settings = EngineSettings(
        modelChoice=text(SETTINGS_MODEL_CHOICE, MODEL_CHOICE_DEFAULT),
        modelFile=text(SETTINGS_MODEL_FILE, ""),
        device=text(SETTINGS_DEVICE, "auto"),
        cacheFolder=text(SETTINGS_CACHE_FOLDER, ""),
    )
    # Values from older or edited settings files fall back to the defaults instead of failing later.
    if settings.modelChoice not in MODEL_CHOICES:
        settings.modelChoice = MODEL_CHOICE_DEFAULT
    if settings.device not in DEVICE_CHOICES:
        settings.device = "auto"
    return settings


def writeSettings(store, settings: EngineSettings) -> None:
    """Store EngineSettings in an object with `setValue(key, value)`, such as qt.QSettings()."""
    store.setValue(SETTINGS_MODEL_CHOICE, settings.modelChoice)
    store.setValue(SETTINGS_MODEL_FILE, settings.modelFile)
    store.setValue(SETTINGS_DEVICE, settings.device)
    store.setValue(SETTINGS_CACHE_FOLDER, settings.cacheFolder)


def modelForSettings(choice: str, filePath: str = "") -> str | None:
    """Return the `model` argument for the engine: None (embedded default), a name or a path."""
    if choice == MODEL_CHOICE_DEFAULT:
        return None
    if choice == MODEL_CHOICE_FILE:
        if not filePath:
            raise ValueError(
                "model choice 'file' needs a model file; choose one in the Mem3D Segment module"
            )
        return filePath
    if choice in MODEL_CHOICES:
        return choice
    raise ValueError(f"model choice {choice!r} is not one of {', '.join(MODEL_CHOICES)}")


def applyCacheFolder(folder: str) -> None:
    """Point the engine's model cache at `folder`. An empty string restores the per-user default."""
    if folder:
        os.environ[CACHE_DIR_VARIABLE] = str(Path(folder).expanduser())
    else:
        os.environ.pop(CACHE_DIR_VARIABLE, None)


def engineFolder() -> Path:
    """Return the folder that contains the `mem3d` package (the scripted module's folder)."""
    import mem3d

    return Path(mem3d.__file__).resolve().parent.parent


def downloadCommand(modelName: str, cacheFolder: str = "") -> tuple[str, list[str], dict[str, str]]:
    """Return (program, arguments, environment additions) that download a registry model.

    The program is Slicer's `PythonSlicer` where it exists, otherwise this Python interpreter.
    PYTHONPATH gains the engine's folder, because Slicer adds scripted module folders to
    `sys.path` only inside the application.
    """
    if modelName != PUBLISHED_MODEL_NAME:
        raise ValueError(f"only {PUBLISHED_MODEL_NAME!r} can be downloaded, not {modelName!r}")
    program = shutil.which("PythonSlicer") or sys.executable
    arguments = ["-m", "mem3d.cli", "models", "download", modelName]
    pythonPath = [str(engineFolder())]
    if os.environ.get("PYTHONPATH"):
        pythonPath.append(os.environ["PYTHONPATH"])
    environment = {"PYTHONPATH": os.pathsep.join(pythonPath)}
    if cacheFolder:
        environment[CACHE_DIR_VARIABLE] = str(Path(cacheFolder).expanduser())
    return program, arguments, environment


def parseDownloadPercent(text: str) -> int | None:
    """Return the last percentage that a tqdm progress bar printed in `text`, or None."""
    matches = _PERCENT_PATTERN.findall(text)
    if not matches:
        return None
    return min(100, int(matches[-1]))


def removePartialDownloads(modelName: str, cacheFolder: Path) -> list[Path]:
    """Remove the staging folders that a cancelled download of `modelName` left in the cache.

    The engine downloads into a folder named ".<name>-<random>.download" beside the final file
    and removes it itself unless its process is killed. Returns the removed folders.
    """
    # NOTE: the pattern repeats how mem3d.registry.download_model names its staging folder, so
    # the two must change together.
    removed = []
    for folder in Path(cacheFolder).glob(f".{modelName}-*.download"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def cacheFolderPath(cacheFolder: str = "") -> Path:
    """Return the model cache folder: `cacheFolder`, or the engine's per-user default."""
    if cacheFolder:
        return Path(cacheFolder).expanduser()
    from mem3d.registry import cache_dir  # imports torch through the checkpoint reader

    return cache_dir()


@dataclass
class DownloadState:
    running: bool
    returnCode: int | None  # exit code once the process has ended
    percent: int | None  # last percentage the progress bar printed
    output: str  # everything the process printed so far


class ModelDownload:
    """A registry model download in a separate process, polled without blocking.

    The process writes its output into a temporary log file, which `poll()` reads, so no pipe
    can fill up and stall the download. `cancel()` ends the process and removes the partial
    download; `close()` removes the log file.
    """

    def __init__(self, modelName: str, cacheFolder: str = ""):
        self.modelName = modelName
        self.cacheFolder = cacheFolder
        self._process: subprocess.Popen | None = None
        self._logPath: Path | None = None
        self._percent: int | None = None

    def start(self, command: tuple[str, list[str], dict[str, str]] | None = None) -> None:
        """Start the download. Tests pass `command` in place of `downloadCommand(...)`."""
        if self._process is not None:
            raise RuntimeError(f"the download of {self.modelName} was already started")
        program, arguments, environment = command or downloadCommand(self.modelName, self.cacheFolder)
        handle, logName = tempfile.mkstemp(prefix="mem3d-download-", suffix=".log")
        self._logPath = Path(logName)
        try:
            with os.fdopen(handle, "wb") as logFile:
                self._process = subprocess.Popen(
                    [program, *arguments],
                    stdout=logFile,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **environment},
                )
        except OSError:
            self.close()
            raise
        log.info("started downloading %s (process %d)", self.modelName, self._process.pid)

    def poll(self) -> DownloadState:
        if self._process is None:
            raise RuntimeError(f"the download of {self.modelName} was not started")
        returnCode = self._process.poll()
        output = self._logPath.read_text(errors="replace") if self._logPath.exists() else ""
        percent = parseDownloadPercent(output)
        if percent is not None:
            self._percent = percent
        return DownloadState(returnCode is None, returnCode, self._percent, output)

    def cancel(self, timeoutSeconds: float = 5.0) -> None:
        """End the download process and remove what it left in the cache folder."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeoutSeconds)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            log.info("cancelled the download of %s", self.modelName)
        folder = cacheFolderPath(self.cacheFolder)
        if folder.is_dir():
            removePartialDownloads(self.modelName, folder)

    def close(self) -> None:
        """Remove the log file. Call it after the process has ended or was cancelled."""
        if self._logPath is not None:
            self._logPath.unlink(missing_ok=True)
            self._logPath = None
