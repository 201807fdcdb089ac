"""Bounded memory bank of encoded slices for one propagation walk."""

from __future__ import annotations

from collections import deque

import torch

# Predicted slices kept in memory besides the key slices. The compact model was trained with
# clips whose memory contains the key slice and up to three predicted slices.
RECENT_SLICES = 3


class MemoryBank:
    """Key slices stay for the whole walk; predicted slices enter a first-in, first-out queue.

    The bank contains at most `len(key entries) + recent` slices however long the walk is, so memory
    use does not grow with the number of slices.
    """

    def __init__(self, recent: int = RECENT_SLICES):
        if recent < 1:
            raise ValueError(f"recent must be at least 1, not {recent}")
        self.permanent: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=recent)

    def add_key_slice(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self.permanent.append((key, value))

    def add_predicted(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self.recent.append((key, value))

    def __len__(self) -> int:
        return len(self.permanent) + len(self.recent)

    def tensors(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return keys (1, Ck, T, h, w) and values (1, Cv, T, h, w) of every stored slice.

        With `device`, every entry is moved there first, because after a runner falls back from
        the GPU to the CPU the bank contains entries on both devices.
        """
        entries = self.permanent + list(self.recent)
        if not entries:
            raise RuntimeError("the memory bank is empty; add a key slice first")
        keys = torch.stack([k.to(device) if device else k for k, _ in entries], dim=2)
        values = torch.stack([v.to(device) if device else v for _, v in entries], dim=2)
        return keys, values
