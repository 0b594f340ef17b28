"""A rich progress bar that counts optimisation steps: runs are step-based, epochs are incidental."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        return f"step {trainer.global_step}/{trainer.max_steps} (epoch {current_epoch})"
