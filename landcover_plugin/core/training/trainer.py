"""Training loop: windows centred on labels, class-balanced loss, AdamW with warm-up and cosine decay.

Single process or several under torchrun (DistributedDataParallel, each rank drawing its own window
indices of each epoch). Validation runs the engine's own sliding-window code over the validation images
(or held-out blocks), so the metric kept with the model is the one users get. With a time budget the
schedule is fitted to it from measured step and validation times (budget.py). Fine-tuning from a model
file can first re-estimate batch-norm statistics on the new imagery and fit the classifier head
(fine_tune.py).
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from ..evaluation.evaluation import network_confusion
from ..evaluation.metrics import scores
from ..model.classes import LandClass
from ..model.model_file import build_network
from .budget import CALIBRATION_STEPS
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Hooks, TrainConfig, TrainResult
from .data import (
    WindowSampler,
    augment_batch,
)
from .fine_tune import adapt_batchnorm, fit_head, freeze_batchnorm
from .loader import epoch_loader
from .records import save_best, write_history, write_plots
from .setup import RunSetup


def train(cfg: TrainConfig, train_items, val_items, classes: tuple[LandClass, ...], bands, out_path: str,
          log_dir: str | None = None, resume: bool = False, data_note: str = "", command: str = "",
          hooks: Hooks | None = None) -> TrainResult:
    """Train, keep the epoch that scores best on validation, and write it to out_path.

    Nothing is written before the first epoch ends. Cancelled (hooks.cancel) after that,
    the best model so far is written and the result says cancelled.
    """
    run = _Run(cfg, train_items, val_items, classes, bands, out_path, log_dir, data_note, command,
               hooks or Hooks())
    try:
        return run.execute(resume)
    finally:
        if run.distributed:
            torch.distributed.destroy_process_group()


class _Run(RunSetup):
    """One training run: set up (setup.RunSetup), then execute(): validate the start, epochs, keep the best,
    write it."""

    def execute(self, resume: bool) -> TrainResult:
        epoch = self._resume() if resume else 0
        if not resume and self.val and self.rank == 0:
            # Epoch 0 is the starting model: if no epoch beats it, it stays the best.
            row = {"epoch": 0, "train_loss": float("nan"), "lr": 0.0, "seconds": 0.0}
            self.init_matrix, metric = self._validate(row)
            self.init_row = row
            self._record(row, " (the starting model)")
            self._keep_if_best(0, metric, self.init_matrix, row, write=False)
        if self.start and self.cfg.adapt_bn and not resume:
            t0 = time.perf_counter()
            adapt_batchnorm(self.net, self.train_items, self._normalise, self.cfg.tile, self.device, seed=self.cfg.seed)
            self.log(f"batch-norm statistics re-estimated on the training imagery ({time.perf_counter() - t0:.1f} s)")
        if self.cfg.fit_head and not resume:
            t0 = time.perf_counter()
            probe = WindowSampler(self.train_items, self.ids, self.cfg.tile, self.cfg.rare_fraction, (1.0, 1.0),
                                  self.cfg.seed)
            loss = fit_head(self.net, probe, self.lut, self._normalise, self.device, self.loss_weights,
                            seed=self.cfg.seed)
            self.log(f"classifier head fitted to the labels on the network's features (loss {loss:.3f}, "
                     f"{time.perf_counter() - t0:.1f} s)")
        if self.distributed:
            torch.distributed.barrier()
        first = epoch
        while epoch < self.budget.plan.epochs:
            losses, seconds = self._epoch(epoch, calibrate=epoch == first)
            if self.cancelled:
                break  # a part of an epoch is not an epoch: the best model so far stands
            self._end_epoch(epoch, losses, seconds)
            epoch += 1
            if self.cancelled or self.budget.out_of_time():
                break
            self.budget.replan(epoch, self.step)
        self._finish()
        return TrainResult(self.best, self.best_epoch if self.epochs_done else None, self.history, self.init_row,
                           self.init_matrix, self.best_matrix, self.epochs_done, self.cancelled)

    def _resume(self) -> int:
        state = load_checkpoint(self.log_dir, self.net, self.opt, self.sched, self.device)
        self.best, self.best_epoch, self.best_state = state["best"], state["best_epoch"], state["best_state"]
        self.history = state["history"]
        self.best_row = next((r for r in self.history if r["epoch"] == self.best_epoch), None)
        self.init_row = next((r for r in self.history if r["epoch"] == 0), None)
        self.step = state["step"]
        self.epochs_done = epoch = state["epoch"] + 1
        self.log(f"resumed after epoch {epoch} (best validation mIoU {self.best:.4f})")
        return epoch

    def _epoch(self, epoch: int, calibrate: bool) -> tuple[list[float], float]:
        """One epoch of training steps; returns the step losses and the seconds it took. With a time budget,
        the first epoch of the run times its first steps and fits the schedule to them."""
        cfg, budget = self.cfg, self.budget
        self.model.train()
        if cfg.freeze_bn:
            freeze_batchnorm(self.net)
        batches = iter(epoch_loader(self.sampler, epoch, cfg.batch_size, self.world, self.rank, cfg.workers))
        t0 = time.perf_counter()
        losses, timed = [], []
        while len(losses) < budget.plan.steps_per_epoch:
            if self.hooks.cancel():
                self.cancelled = True
                self.log(f"cancelled during epoch {epoch + 1}")
                break
            ts = time.perf_counter()
            losses.append(self._train_step(next(batches), epoch, len(losses)))
            timed.append(time.perf_counter() - ts)
            if calibrate and cfg.max_minutes:
                self._time_steps(timed, t0, epoch)
            self.hooks.progress(min(1.0, self.step / max(1, budget.total_steps)))
            self._report_step(epoch, losses)
            if budget.overrun():
                break  # the estimate was short: end here rather than overrun the budget
        del batches
        if timed[1:]:
            budget.step_s = float(np.mean(timed[1:]))
        return losses, time.perf_counter() - t0

    def _time_steps(self, timed: list[float], epoch_t0: float, epoch: int) -> None:
        """The budget checked after the first step, and the schedule fitted after CALIBRATION_STEPS."""
        if len(timed) == 1 and not self.epochs_done:
            self.budget.check_first_step(timed[0], epoch_t0)
        if len(timed) == CALIBRATION_STEPS:
            self.budget.step_s = float(np.mean(timed[1:]))
            self.log(self.budget.fit(epoch, epoch_t0, self.step))

    def _report_step(self, epoch: int, losses: list[float]) -> None:
        if self.hooks.step is not None and self.rank == 0:
            plan = self.budget.plan
            self.hooks.step(epoch + 1, plan.epochs, len(losses), plan.steps_per_epoch, float(np.mean(losses[-20:])))

    def _train_step(self, batch, epoch: int, k: int) -> float:
        cfg, device = self.cfg, self.device
        imgs = [torch.from_numpy(b[0]).to(device, non_blocking=True).float() for b in batch]
        msks = [torch.from_numpy(b[1]).to(device, non_blocking=True) for b in batch]
        x, y = augment_batch(imgs, msks, [b[2] for b in batch], [b[3] for b in batch], cfg.tile, cfg.color_jitter,
                             cfg.seed * 100003 + epoch * 1009 + k)
        x = self._normalise(x)
        y = self.lut[y]
        with torch.autocast(device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = self.loss_fn(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.step += 1
        return float(loss.detach())

    def _end_epoch(self, epoch: int, losses: list[float], seconds: float) -> None:
        train_loss = float(np.mean(losses)) if losses else float("nan")
        if self.distributed:
            t = torch.tensor([train_loss], device=self.device)
            torch.distributed.all_reduce(t)
            train_loss = float(t) / self.world
        lr = self.cfg.lr * self.budget.lr_factor(self.step)  # the decoder's; the encoder's and head's are scaled
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "lr": round(lr, 7), "seconds": round(seconds, 1)}
        self.epochs_done = epoch + 1
        if self.rank == 0:
            matrix, metric = self._validate(row) if self.val else (None, -train_loss)
            self._record(row)
            if self._keep_if_best(epoch + 1, metric, matrix, row, write=True):
                self.log(f"saved {self.out_path} (best so far)")
            if self.cfg.average_last:
                self.averaged.add(epoch + 1, self.net)
            if self.log_dir:
                write_history(os.path.join(self.log_dir, "epochs.csv"), self.history)
                save_checkpoint(self.log_dir, self.net, self.opt, self.sched, epoch, self.step, self.best,
                                self.best_epoch, self.best_state, self.history)
        if self.distributed:
            torch.distributed.barrier()

    def _record(self, row: dict, note: str = "") -> None:
        """An epoch's row (or the starting model's, or an average's) into the history and the log."""
        self.history.append(row)
        self.log(" ".join(f"{k}={v}" for k, v in row.items()) + note)

    def _validate(self, row: dict):
        """Validation confusion and mean IoU of the network as it is now; adds their columns to row."""
        t0 = time.perf_counter()
        matrix = network_confusion(self.net, self.spec, self.val, self.device, self.cfg.infer_tile,
                                   self.cfg.infer_overlap)
        s = scores(matrix, self.names)
        row.update(val_miou=round(s["miou"], 5), val_accuracy=round(s["accuracy"], 5),
                   **{f"iou_{n}": (None if s["iou"][n] is None else round(s["iou"][n], 5)) for n in self.names})
        self.budget.val_s = time.perf_counter() - t0
        return matrix, s["miou"]

    def _keep_if_best(self, epoch: int, metric: float, matrix, row: dict, write: bool) -> bool:
        if metric <= self.best:
            return False
        self.best, self.best_epoch, self.best_matrix, self.best_row = metric, epoch, matrix, row
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.net.state_dict().items()}
        if write:
            self._write()
        return write

    def _write(self) -> None:
        net = build_network(self.spec)
        net.load_state_dict(self.best_state)
        save_best(self.out_path, net, self.spec, self.cfg, self.budget.plan.epochs, self.best_row, self.data_note,
                  self.command, self.init_row, self.calibration)

    def _try_average(self) -> None:
        """The mean of the last epochs' weights, kept where it validates better than every single epoch (or,
        without validation, always: averaging is then the recipe's choice)."""
        if len(self.averaged.kept) < 2 or self.cancelled:
            return
        epochs = self.averaged.epochs
        self.averaged.load_mean_into(self.net)
        label = f"mean of epochs {epochs[0]}-{epochs[-1]}"
        row = {"epoch": f"avg{epochs[0]}-{epochs[-1]}", "train_loss": float("nan"), "lr": 0.0, "seconds": 0.0}
        if self.val:
            matrix, metric = self._validate(row)
            self._record(row, f" ({label})")
        else:
            matrix, metric = None, float("inf")
        if self._keep_if_best(epochs[-1], metric, matrix, row, write=True):
            self.log(f"saved {self.out_path}: the {label}")

    def _finish(self) -> None:
        if self.rank != 0:
            return
        self._try_average()
        if self.epochs_done and self.best_epoch == 0:
            self._write()  # the starting model was never beaten: it is the result
        if self.cfg.int8_check and self.epochs_done and not self.cancelled:
            from ..evaluation.int8_agreement import record_on_validation

            record_on_validation(self.out_path, self.val, self.command or "training", self.log, self.hooks.cancel)
        if self.cancelled:
            if self.epochs_done:
                self.log(f"cancelled after {self.epochs_done} epoch(s): wrote the best model so far (epoch "
                         f"{self.best_epoch}) to {self.out_path}")
            else:
                self.log("cancelled before the first epoch ended: no model was written")
        if self.log_dir:
            write_history(os.path.join(self.log_dir, "epochs.csv"), self.history)
            write_plots(self.log_dir, self.history, self.best_matrix, self.names)


