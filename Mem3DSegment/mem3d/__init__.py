"""Mem3D engine: propagate a mask drawn on a few slices through a 3D image with an STM network.

`mem3d.propagate(image, annotation, spacing)` is the one-call API and `mem3d.open_session(...)`
the interactive one (see `mem3d.api`). They are imported on first use, so `import mem3d` stays
cheap for code that only reads files.
"""

__version__ = "0.1.0"

_API_NAMES = ("propagate", "open_session", "load_runner", "unload")


def __getattr__(name):
    if name in _API_NAMES:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mem3d' has no attribute {name!r}")
