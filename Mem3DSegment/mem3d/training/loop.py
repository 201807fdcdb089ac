"""The training loop: time budget, resumable checkpoints, validation, export."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..network import STM, NetworkConfig, compact_config, count_parameters
from .clips import ClipSettings
from .data import ClipBatcher, ObjectPool
from .step import clip_loss, forward_clips, iou_per_slice

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    output: Path
    max_steps: int = 100_000
    time_budget_s: float = 7200.0
    batch_clips: int = 6
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    seed: int = 0
    log_every: int = 50
    validate_every: int = 500
    validation_clips: int = 48
    warped_prior: bool = True  # prior = previous mask warped by quick demons (mem3d.warp)
    bf16: bool = True  # bfloat16 autocast: about 1.5-2x faster on CPUs with AVX-512 BF16 or AMX
    clip: ClipSettings = field(default_factory=ClipSettings)
    network: NetworkConfig = field(default_factory=compact_config)


def learning_rate(settings: TrainSettings, step: int, elapsed: float) -> float:
    """Linear warm-up, then cosine decay over whichever runs out first: steps or time."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = max(step / settings.max_steps, elapsed / settings.time_budget_s)
    return settings.learning_rate * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1))))


class Trainer:
    def __init__(self, settings: TrainSettings, pool: ObjectPool, validation: ObjectPool | None,
                 device: str = "cpu"):
        self.settings = settings
        self.device = torch.device(device)
        torch.manual_seed(settings.seed)
        self.network = STM(settings.network).to(self.device).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=settings.learning_rate,
                                           weight_decay=1e-4)
        self.batcher = ClipBatcher(pool, settings.clip, settings.seed)
        self.validation = self._validation_set(validation)
        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        self.best = {"val_dice": -1.0, "step": 0}

    def _validation_set(self, pool):
        if pool is None:
            return None
        batcher = ClipBatcher(pool, self.settings.clip, seed=12345)
        return batcher.batch(self.settings.validation_clips, augmented=False)

    def _autocast(self):
        enabled = self.settings.bf16 and self.device.type == "cpu"
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)

    def train_step(self, images, masks) -> dict:
        """One optimiser step on a batch (B, T, H, W); return the loss terms."""
        self.network.train()
        images, masks = images.to(self.device), masks.to(self.device)
        with self._autocast():
            logits, quality = forward_clips(self.network, images, masks, self.settings.warped_prior)
        loss, terms = clip_loss(logits.float(), None if quality is None else quality.float(),
                                masks[:, 1:])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 5.0)
        self.optimizer.step()
        terms["loss"] = loss.item()
        return terms

    @torch.inference_mode()
    def validate(self) -> dict:
        """3D Dice per clip over slices 1..T-1, and the quality head's mean absolute error.

        A per-slice mean would be dominated by the empty slices past an object's end, where
        predicting nothing at all already scores 1.
        """
        self.network.eval()
        images, masks = self.validation
        dices, quality_errors = [], []
        for start in range(0, images.shape[0], 8):
            batch_images = images[start : start + 8].to(self.device)
            batch_masks = masks[start : start + 8].to(self.device)
            with self._autocast():
                logits, quality = forward_clips(self.network, batch_images, batch_masks,
                                                self.settings.warped_prior)
            predicted = (torch.softmax(logits.float(), dim=2)[:, :, 1] > 0.5).float()
            target = batch_masks[:, 1:]
            dices.append(_dice(predicted.flatten(1, 2), target.flatten(1, 2)).cpu())
            if quality is not None:
                iou = iou_per_slice(predicted, target)
                quality_errors.append((quality.float() - iou).abs().cpu())
        result = {"val_dice": float(torch.cat(dices).mean())}
        if quality_errors:
            result["val_quality_mae"] = float(torch.cat(quality_errors).mean())
        return result

    def run(self, stop_requested=lambda: False) -> dict:
        s = self.settings
        started = time.monotonic() - self.elapsed
        terms_sum, terms_count = {}, 0
        while self.step < s.max_steps and self.elapsed < s.time_budget_s and not stop_requested():
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(s, self.step, self.elapsed)
            terms = self.train_step(*self.batcher.batch(s.batch_clips))
            for key, value in terms.items():
                terms_sum[key] = terms_sum.get(key, 0.0) + value
            terms_count += 1
            self.step += 1
            self.elapsed = time.monotonic() - started
            if self.step % s.log_every == 0:
                self._log({k: v / terms_count for k, v in terms_sum.items()})
                terms_sum, terms_count = {}, 0
            if self.validation is not None and self.step % s.validate_every == 0:
                self._validate_and_save()
        if self.validation is not None:
            self._validate_and_save()
        self.save_checkpoint()
        return {"steps": self.step, "seconds": self.elapsed, **self.best}

    def _log(self, terms: dict):
        record = {"step": self.step, "seconds": round(self.elapsed, 1),
                  "lr": self.optimizer.param_groups[0]["lr"], **terms}
        self.history.append(record)
        log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in record.items()))
        with open(self.settings.output / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _validate_and_save(self):
        metrics = self.validate()
        self._log(metrics)
        if metrics["val_dice"] > self.best["val_dice"]:
            self.best = {**metrics, "step": self.step}
            self._save_weights(self.settings.output / "best.pt")
        self.save_checkpoint()

    def _save_weights(self, path: Path):
        _atomic_torch_save({"network": self.network.state_dict(), "best": self.best}, path)

    def save_checkpoint(self):
        state = {
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "best": self.best,
            "history": self.history,
            "settings": _settings_record(self.settings),
            "batcher_rng": self.batcher.rng.bit_generator.state,
            "batcher_generator": self.batcher.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        _atomic_torch_save(state, self.settings.output / "last.pt")

    def resume(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.best, self.history = state["best"], state["history"]
        self.batcher.rng.bit_generator.state = state["batcher_rng"]
        self.batcher.generator.set_state(state["batcher_generator"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from %s at step %d (%.0f s)", path, self.step, self.elapsed)


def _dice(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    overlap = (predicted * target).sum((-2, -1))
    total = predicted.sum((-2, -1)) + target.sum((-2, -1))
    return torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total)).flatten()


def _atomic_torch_save(state: dict, path: Path) -> None:
    temporary = path.with_name(path.name + ".partial")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _settings_record(settings: TrainSettings) -> dict:
    record = asdict(settings)
    record["output"] = str(settings.output)
    return record


def describe_network(network: STM) -> dict:
    return {"parameters": count_parameters(network), "config": network.config.to_dict()}


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)
