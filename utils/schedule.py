"""A faster end for OneCycleLR: the recipe's ``anneal_from``.

OneCycle's cosine reaches a low learning rate only in the last two epochs, so the averaged
weights tested after epochs 11-12 still come from a fast-moving net. ``FastAnnealOneCycleLR``
is OneCycleLR to the step ``anneal_start``, the same numbers to the last bit (it asks OneCycle
for them), and from there a cosine from the LR reached to ``floor`` x the peak over
``anneal_steps`` steps, held to the end: every step still trains. Momentum keeps OneCycle's cycle.
"""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import OneCycleLR


class FastAnnealOneCycleLR(OneCycleLR):
    def __init__(self, optimizer, *, anneal_start: int, anneal_steps: int, floor: float, **onecycle):
        if anneal_start < 1 or anneal_steps < 1 or not 0 < floor < 1:
            raise ValueError(f"need anneal_start >= 1, anneal_steps >= 1 and 0 < floor < 1, got "
                             f"{anneal_start}, {anneal_steps}, {floor}")
        self.anneal_start, self.anneal_steps, self.floor = anneal_start, anneal_steps, floor
        self.anneal_from_lrs = None  # OneCycle's LRs at anneal_start, where the cosine begins
        super().__init__(optimizer, **onecycle)

    def get_lr(self):
        onecycle = super().get_lr()  # also sets OneCycle's momentum for this step
        step = self.last_epoch
        if step < self.anneal_start:
            return onecycle
        if self.anneal_from_lrs is None:
            self.anneal_from_lrs = onecycle
        done = min(1.0, (step - self.anneal_start) / self.anneal_steps)
        return [floor + (start - floor) * (1 + math.cos(math.pi * done)) / 2
                for start, floor in ((lr, self.floor * group["max_lr"])
                                     for lr, group in zip(self.anneal_from_lrs, self.optimizer.param_groups))]
