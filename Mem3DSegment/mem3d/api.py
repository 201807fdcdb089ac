"""One-call Python API for scripts and the Slicer Python console.

    import mem3d
    result = mem3d.propagate(image, annotation, spacing=(5.0, 0.8, 0.8))
    result.labels          # (k, j, i) labelmap on the image's grid
    result.quality[1]      # quality estimate per slice for label 1

For interactive use, `open_session` returns a `PropagationSession` whose `run()` generator
yields progress after every slice. `method="registration"` propagates by 2D demons registration
between neighbouring slices instead of the network, and loads no model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .checkpoints import LoadedModel, get_model
from .errors import Mem3DError
from .propagation import METHODS, Progress, PropagationResult, PropagationSession
from .registration import RegistrationSettings
from .registry import DEFAULT_MODEL, resolve_model
from .runtime import ModelRunner, choose_device
from .walk import WalkSettings

_runners: dict = {}


def load_runner(model: str | LoadedModel | None = None, device: str = "auto") -> ModelRunner:
    """Return a ModelRunner for a registry name, a file path or a loaded model; kept loaded."""
    torch_device = choose_device(device)
    if isinstance(model, LoadedModel):
        return ModelRunner.create(model.network, torch_device, prior_mode=_prior_mode(model))
    path = resolve_model(model or DEFAULT_MODEL)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, str(torch_device))  # a rewritten file reloads
    if key not in _runners:
        loaded = get_model(path, torch_device)
        _runners[key] = ModelRunner.create(loaded.network, torch_device,
                                           prior_mode=_prior_mode(loaded))
    return _runners[key]


def _prior_mode(model: LoadedModel) -> str:
    """Return the prior the model was trained with; files without that entry used the unwarped mask."""
    prior = model.metadata.get("prior", "previous")
    if prior not in ("previous", "registration"):
        raise Mem3DError(f"model {model.path} has an unknown prior {prior!r} in its metadata; "
                         "expected 'previous' or 'registration'")
    return prior


def open_session(image: np.ndarray, annotation: np.ndarray,
                 spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), axis="auto",
                 model=None, device: str = "auto", key_slices=None, slice_range=None,
                 settings: WalkSettings | None = None, method: str = "network",
                 registration_settings: RegistrationSettings | None = None) -> PropagationSession:
    """Create a session for a (k, j, i) image and labelmap; spacing is (k, j, i) in mm.

    With `method="registration"`, `model` and `device` are ignored and no model is loaded.
    """
    if method not in METHODS:
        raise Mem3DError(f"method {method!r} is not one of {', '.join(METHODS)}")
    return PropagationSession(
        runner=load_runner(model, device) if method == "network" else None,
        image=image,
        annotation=annotation,
        spacing=spacing,
        axis=axis,
        key_slices=key_slices,
        slice_range=slice_range,
        settings=settings or WalkSettings(),
        method=method,
        registration_settings=registration_settings or RegistrationSettings(),
    )


def propagate(image: np.ndarray, annotation: np.ndarray,
              spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), axis="auto", model=None,
              device: str = "auto", key_slices=None, slice_range=None,
              progress: Callable[[Progress], None] | None = None,
              method: str = "network") -> PropagationResult:
    """Propagate every label of `annotation` through `image` and return the result."""
    session = open_session(image, annotation, spacing, axis, model, device, key_slices,
                           slice_range, method=method)
    for step in session.run():
        if progress is not None:
            progress(step)
    return session.result


def unload() -> None:
    """Forget loaded models and free their memory (GPU memory included)."""
    from .checkpoints import unload_models

    _runners.clear()
    unload_models()
