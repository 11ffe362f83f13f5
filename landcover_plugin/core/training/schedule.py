"""How many epochs of how many steps fit a time budget: pure arithmetic, measured step and validation times in."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError

MIN_STEPS = 10  # an epoch shorter than this is mostly validation
MAX_EPOCHS = 200


@dataclass(frozen=True)
class Schedule:
    epochs: int
    steps_per_epoch: int

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def fit_schedule(budget_s: float, step_s: float, val_s: float, steps_per_epoch: int, epochs: int | None,
                 min_steps: int = MIN_STEPS, max_epochs: int = MAX_EPOCHS) -> Schedule:
    """Epochs and steps per epoch that end within budget_s.

    epochs None: as many epochs of steps_per_epoch as fit (the budget is the plan).
    epochs given: that many, with shorter epochs if they do not fit, and fewer epochs only
    where an epoch would fall below min_steps. Raises InputError when not even one
    epoch of min_steps fits.
    """
    steps_per_epoch = max(1, steps_per_epoch)
    short = min(min_steps, steps_per_epoch)
    shortest_epoch = short * step_s + val_s
    if shortest_epoch > budget_s:
        need = math.ceil(shortest_epoch / 60 * 10) / 10
        raise InputError(f"The time budget of {budget_s / 60:.1f} minutes is too small for one epoch here "
                         f"(about {need} minutes: {short} steps of {step_s:.1f} s and {val_s:.0f} s of "
                         f"validation); give more minutes.")
    if epochs is None:
        steps_per_epoch = max(steps_per_epoch, min_steps)  # else validation would take most of the time
        fit = int(budget_s // (steps_per_epoch * step_s + val_s))
        if fit > max_epochs:  # longer epochs rather than more of them
            return Schedule(max_epochs, int((budget_s / max_epochs - val_s) // step_s))
        if fit >= 1:
            return Schedule(fit, steps_per_epoch)
        return Schedule(1, max(short, int((budget_s - val_s) // step_s)))
    epoch_s = steps_per_epoch * step_s + val_s
    if epochs * epoch_s <= budget_s:
        return Schedule(epochs, steps_per_epoch)
    steps = int((budget_s / epochs - val_s) // step_s)
    if steps >= short:
        return Schedule(epochs, steps)
    return Schedule(max(1, int(budget_s // shortest_epoch)), short)
