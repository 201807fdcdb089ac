"""One forward pass over a batch of clips, and the training loss.

Slice 0 of each clip is the key slice: its true mask goes into memory. Every later slice is
segmented from the memory of all earlier slices (their predicted masks, as at inference), with
the previous slice's mask as the prior input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..network import STM
from ..warp import warp_prior


def forward_clips(network: STM, images: torch.Tensor, masks: torch.Tensor,
                  warped_prior: bool = False):
    """Segment slices 1..T-1 of clips (B, T, H, W); return logits and quality per slice.

    With `warped_prior`, the prior is the previous mask warped onto the slice by quick demons.
    """
    key_mask = masks[:, 0:1]
    key, value = network.encode_memory(images[:, 0:1], key_mask, 1 - key_mask)
    keys, values = [key], [value]
    prior = key_mask
    logits_per_slice, quality_per_slice = [], []
    for t in range(1, images.shape[1]):
        if warped_prior:
            prior = warp_prior(images[:, t : t + 1], images[:, t - 1 : t], prior)
        query = network.encode_query(images[:, t : t + 1], prior)
        probability, quality, logits = network.decode(
            query, torch.stack(keys, dim=2), torch.stack(values, dim=2), prior
        )
        logits_per_slice.append(logits)
        quality_per_slice.append(quality)
        if t + 1 < images.shape[1]:
            key, value = network.encode_memory(images[:, t : t + 1], probability, 1 - probability)
            keys.append(key)
            values.append(value)
            prior = probability
    return torch.stack(logits_per_slice, 1), _stack_or_none(quality_per_slice)


def _stack_or_none(items):
    return None if items[0] is None else torch.stack(items, 1)


def soft_dice_loss(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice, averaged over slices whose target is not empty.

    Empty target slices are left to the cross-entropy term: a smoothed Dice on them costs about
    0.5 for a single predicted pixel, which drives the network to predict nothing anywhere.
    """
    dims = (-2, -1)
    overlap = (probability * target).sum(dims)
    total = probability.sum(dims) + target.sum(dims)
    present = target.sum(dims) > 0
    if not bool(present.any()):
        return probability.sum() * 0.0
    return (1 - (2 * overlap[present] + 1) / (total[present] + 1)).mean()


def iou_per_slice(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of binary masks (..., H, W); 1 where both are empty."""
    intersection = (prediction * target).sum((-2, -1))
    union = ((prediction + target) > 0).float().sum((-2, -1))
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def clip_loss(logits: torch.Tensor, quality, targets: torch.Tensor, quality_weight: float = 0.5):
    """Cross-entropy + soft Dice on slices 1..T-1, plus the quality head's IoU regression."""
    b, t, _, h, w = logits.shape
    flat_logits = logits.reshape(b * t, 2, h, w)
    flat_targets = targets.reshape(b * t, h, w)
    cross_entropy = F.cross_entropy(flat_logits, flat_targets.long())
    probability = torch.softmax(flat_logits, dim=1)[:, 1]
    dice = soft_dice_loss(probability, flat_targets)
    loss = cross_entropy + dice
    terms = {"ce": cross_entropy.item(), "dice": dice.item()}
    if quality is not None:
        true_iou = iou_per_slice((probability > 0.5).float(), flat_targets).detach()
        quality_loss = F.mse_loss(quality.reshape(-1), true_iou)
        loss = loss + quality_weight * quality_loss
        terms["quality"] = quality_loss.item()
    return loss, terms
