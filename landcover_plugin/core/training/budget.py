"""A run's schedule (epochs of steps) and its learning rate, and with a time budget (max_minutes) the
schedule fitted to measured step and validation times: after the first steps, and again after each epoch."""
from __future__ import annotations

import math
import time
from typing import Callable

from ..errors import InputError
from .config import TrainConfig
from .schedule import Schedule, fit_schedule

CALIBRATION_STEPS = 3  # steps timed before a time budget is turned into a schedule (the first is not counted)


class Budget:
    def __init__(self, cfg: TrainConfig, data_steps: int, val_pixels: int, rank: int,
                 share: Callable[[Schedule], Schedule] = lambda plan: plan):
        """data_steps: the steps an epoch of the data takes; val_pixels: validation imagery per epoch;
        share: rank 0's schedule for every rank of a distributed run."""
        self.cfg, self.data_steps, self.val_pixels, self.rank, self.share = cfg, data_steps, val_pixels, rank, share
        self.plan = Schedule(cfg.epochs or 1, data_steps)
        self.total_steps = self.plan.steps
        self.step_s: float | None = None  # measured seconds a training step
        self.val_s: float | None = None  # measured seconds a validation
        self.t_start = time.perf_counter()

    def lr_factor(self, step: int) -> float:
        """Linear warm-up over at most a tenth of the steps, then cosine decay to zero at the last step."""
        warm = max(1, min(int(self.cfg.warmup_epochs * self.plan.steps_per_epoch), self.total_steps // 10))
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, self.total_steps - warm))))

    def estimated_val_s(self) -> float:
        if self.val_s is not None or not self.val_pixels:
            return self.val_s or 0.0
        # Inference costs about a third of a training step per pixel.
        return self.step_s * self.val_pixels / (self.cfg.batch_size * self.cfg.tile ** 2) / 3

    def check_first_step(self, first_step_s: float, epoch_t0: float) -> None:
        """InputError before anything is written when one epoch cannot fit what is left of the budget.

        The first step pays for start-up, so it counts at half its time here.
        """
        left = self.cfg.max_minutes * 60 - (epoch_t0 - self.t_start)
        self.step_s = first_step_s / 2
        fit_schedule(left, self.step_s, self.estimated_val_s(), self.data_steps, None)

    def fit(self, epoch: int, epoch_t0: float, step: int) -> str:
        """Fit the rest of the run (epoch `epoch` included, begun at epoch_t0) into what is left of the budget,
        once CALIBRATION_STEPS steps are timed; the log's line about it."""
        self._fit_rest(epoch, epoch_t0, step - CALIBRATION_STEPS, strict=True)
        return (f"{self.step_s:.2f} s a step, {self.estimated_val_s():.1f} s to validate: {self.plan.epochs} "
                f"epochs of {self.plan.steps_per_epoch} steps fit in {self.cfg.max_minutes:g} minutes")

    def replan(self, epoch: int, step: int) -> None:
        """After each epoch, with measured step and validation times, fit the epochs left again."""
        if self.cfg.max_minutes:
            self._fit_rest(epoch, time.perf_counter(), step, strict=False)

    def _fit_rest(self, epoch: int, since: float, steps_before: int, strict: bool) -> None:
        """Plan epochs `epoch`.. into the budget left at `since` (a perf_counter time); steps_before:
        the steps taken before epoch `epoch`. strict: raise when not even one epoch fits, else end here."""
        if self.rank == 0:
            left = self.cfg.max_minutes * 60 * 0.98 - (since - self.t_start)
            epochs = None if self.cfg.epochs is None else self.cfg.epochs - epoch
            try:
                fitted = fit_schedule(left, self.step_s, self.estimated_val_s(), self.data_steps, epochs)
                self.plan = Schedule(epoch + fitted.epochs, fitted.steps_per_epoch)
            except InputError:
                if strict:
                    raise
                self.plan = Schedule(epoch, self.plan.steps_per_epoch)  # no time for another epoch
        self.plan = self.share(self.plan)
        self.total_steps = steps_before + (self.plan.epochs - epoch) * self.plan.steps_per_epoch

    def out_of_time(self) -> bool:
        """Too little of the budget is left to begin another epoch."""
        return bool(self.cfg.max_minutes) and time.perf_counter() - self.t_start > self.cfg.max_minutes * 60 * 0.98

    def overrun(self) -> bool:
        """The budget is spent: end the epoch here rather than overrun it."""
        return bool(self.cfg.max_minutes) and time.perf_counter() - self.t_start > self.cfg.max_minutes * 60
