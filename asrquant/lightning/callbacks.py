"""`QuantizationCallback`: fake quantization for QAT and PTQ inside any Lightning Trainer.

    trainer = Trainer(callbacks=[QuantizationCallback(recipe, mode="qat")])
    trainer.fit(my_module, datamodule)       # fine-tunes through the quantizer

    trainer = Trainer(callbacks=[QuantizationCallback(recipe, mode="ptq")])
    trainer.test(my_trained_module, datamodule)   # tests with quantized weights

It works with any LightningModule: the recipe's patterns are matched against the module's
own parameter names (e.g. "model.encoder.*" for ours, whatever yours are called).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities import move_data_to_device
from torch import nn
from tqdm.auto import tqdm

from asrquant.io import json_safe
from asrquant.quant import (
    CHECKPOINT_KEY,
    QuantizedTensor,
    QuantRecipe,
    QuantReport,
    attach_fake_quant,
    build_report,
    detach_fake_quant,
    fake_quant_specs,
    recipe_of_checkpoint,
    scales_of_checkpoint,
)
from asrquant.quant.calibrate import CalibrationConfig, calibrate_quantize
from asrquant.quant.recipe import SCALE_MODES

MODES = ("qat", "ptq")


def report_metrics(report: QuantReport, prefix: str = "quant/") -> dict[str, float]:
    return {
        f"{prefix}size_mb": report.quantized_bytes / 1e6,
        f"{prefix}float32_mb": report.float32_bytes / 1e6,
        f"{prefix}effective_bits": report.bits_per_weight,
        f"{prefix}quantized_share": report.quantized_share,
    }


class QuantizationCallback(L.Callback):
    """Attach fake quantization for QAT (at fit set-up) or PTQ (at validation/test start).

    qat: weights are fake-quantized from `setup("fit")` on, before the optimizer is built and
         before a checkpoint is restored, so fine-tuning trains the float weights through the
         straight-through estimator and resuming a QAT run works.
    ptq: at validation/test start the chosen weights are replaced by their quantized values;
         with `restore=True` (default) the float weights are put back at the end.

    The report totals (size in MB, effective bits per weight, quantized share) go to every
    logger of the Trainer and into the checkpoint under "asrquant_quantization", from which
    `restore_quantization` re-attaches the same recipe to a fresh model.
    """

    def __init__(
        self,
        recipe: QuantRecipe,
        mode: str = "qat",
        strict: bool = False,
        restore: bool = True,
        target: Callable[[L.LightningModule], nn.Module] | None = None,
        calibrate: Callable[[L.Trainer, nn.Module, QuantRecipe], QuantRecipe] | None = None,
        progress: bool = True,
        calibration: CalibrationConfig | None = None,
        calibration_data: Iterable | Callable[[L.Trainer], Iterable] | None = None,
        calibration_forward: Callable[[nn.Module, Any], Any] | None = None,
        num_calibration: int = 128,
        scales: str = "dynamic",
    ):
        """
        target: picks the submodule to quantize (default: the LightningModule itself).
        calibrate: optional hook run once before attaching, given the trainer, the target and
            the recipe, returning the recipe to use: the place for recipes that need data
            (e.g. per-layer sensitivity measured on the validation loader).
        calibration: calibration PTQ (GPTQ, output-aware clip; asrquant.quant.calibrate)
            instead of round-to-nearest: in PTQ mode the weights are quantized with it; in
            QAT mode fine-tuning starts from its result.
        calibration_data: batches for it (an iterable, or a function of the trainer); None:
            `trainer.datamodule.calibration_dataloader(num_calibration)`.
        calibration_forward: runs the target on one batch (default: calls it with the
            batch's entries that its forward takes by name, or with the batch itself).
        scales: QAT only: "dynamic" (recomputed from the weights each step) or "learned"
            (LSQ: trained scales and zero points, starting from RTN or the calibration's).
        """
        if mode not in MODES:
            raise ValueError(f"QuantizationCallback mode={mode!r} is invalid; allowed: {MODES}")
        if not isinstance(recipe, QuantRecipe):
            raise ValueError(f"QuantizationCallback recipe={recipe!r} is invalid; "
                             "allowed: a QuantRecipe (see asrquant.quant.recipe_from_config)")
        self.recipe = recipe
        self.mode = mode
        self.strict = strict
        self.restore = restore
        self.target = target
        self.calibrate = calibrate
        self.progress = progress
        if calibration is not None and not isinstance(calibration, CalibrationConfig):
            raise ValueError(f"QuantizationCallback calibration={calibration!r} is invalid; "
                             "allowed: None or a CalibrationConfig")
        self.calibration = calibration
        self.calibration_data = calibration_data
        self.calibration_forward = calibration_forward or call_with_batch
        self.num_calibration = num_calibration
        if scales not in SCALE_MODES or (scales != "dynamic" and mode != "qat"):
            raise ValueError(f"QuantizationCallback scales={scales!r} is invalid with mode="
                             f"{mode!r}; allowed: {list(SCALE_MODES)} for qat, 'dynamic' for "
                             "ptq")
        self.scales = scales
        self.chosen: dict[str, QuantizedTensor] | None = None  # codes calibration picked
        self.report: QuantReport | None = None
        self._float_backup: dict[str, torch.Tensor] | None = None

    def _module(self, pl_module: L.LightningModule) -> nn.Module:
        return self.target(pl_module) if self.target else pl_module

    def _attach(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = self._module(pl_module)
        if fake_quant_specs(module):
            return
        if self.calibrate is not None:
            self.recipe = self.calibrate(trainer, module, self.recipe)
        if self._calibrates:
            self._run_calibration(trainer, pl_module)
        self.report = attach_fake_quant(module, self.recipe, strict=self.strict,
                                        scales=self.scales, init=self.chosen)
        self._log(trainer)

    @property
    def _calibrates(self) -> bool:
        return self.calibration is not None and self.calibration.needs_data

    def _calibration_batches(self, trainer: L.Trainer, device) -> list:
        data = self.calibration_data
        if data is None:
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "calibration_dataloader"):
                raise ValueError("calibration PTQ needs data: pass calibration_data to "
                                 "QuantizationCallback, or a datamodule with "
                                 "calibration_dataloader(num_utterances)")
            data = datamodule.calibration_dataloader(self.num_calibration)
        elif callable(data):
            data = data(trainer)
        return [move_data_to_device(b, device) for b in data]

    def _run_calibration(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Calibration PTQ: the target's planned weights take their quantized values."""
        module = self._module(pl_module)
        plan = self.recipe.plan(module, strict=self.strict)
        batches = self._calibration_batches(trainer, pl_module.device)
        show = self.progress and trainer.is_global_zero
        bar = (lambda items: tqdm(items, desc=f"PTQ: {self.calibration.method} calibration",
                                  unit="stage", disable=not show, leave=False))
        self.chosen = calibrate_quantize(module, plan, batches, self.calibration_forward,
                                         self.calibration, progress=bar)
        self.report = build_report(module, plan, self.recipe.name)

    def _log(self, trainer: L.Trainer) -> None:
        metrics = report_metrics(self.report)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # -- QAT ---------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.mode == "qat" and stage == "fit":
            self._attach(trainer, pl_module)

    # -- PTQ ---------------------------------------------------------------------------
    def _ptq_start(self, trainer, pl_module) -> None:
        if self.mode != "ptq" or self._float_backup is not None:
            return
        module = self._module(pl_module)
        if fake_quant_specs(module):
            raise ValueError("PTQ needs a float model, but this one already has fake "
                             "quantization attached (a QAT model?): test it without the "
                             "PTQ callback")
        self._float_backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if self._calibrates:
            if self.calibrate is not None:
                self.recipe = self.calibrate(trainer, module, self.recipe)
            self._run_calibration(trainer, pl_module)  # weights hold their quantized values
            self._log(trainer)
            return
        self._attach(trainer, pl_module)
        show = self.progress and trainer.is_global_zero
        bar = (lambda items: tqdm(items, desc="PTQ: quantizing weights", unit="weight",
                                  disable=not show, leave=False))
        detach_fake_quant(module, bake=True, progress=bar)  # quantize once, not every forward

    def _ptq_end(self, trainer, pl_module) -> None:
        if self.mode != "ptq" or self._float_backup is None:
            return
        if self.restore:
            self._module(pl_module).load_state_dict(self._float_backup)
        self._float_backup = None

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.state.fn != "fit":
            self._ptq_start(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn != "fit":
            self._ptq_end(trainer, pl_module)

    def on_test_start(self, trainer, pl_module):
        self._ptq_start(trainer, pl_module)

    def on_test_end(self, trainer, pl_module):
        self._ptq_end(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception):
        self._ptq_end(trainer, pl_module)  # never leave a user's model with baked weights

    # -- checkpoints ---------------------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "mode": self.mode,
            "recipe": self.recipe.to_dict(),
            "scales": self.scales,
            "report": None if self.report is None else json_safe(self.report.totals()),
        }


def call_with_batch(module: nn.Module, batch: Any) -> Any:
    """module(batch entries its forward names), e.g. ASRModule(audio=..., audio_lens=...) from
    a dict batch; module(*batch) for a tuple or list; module(batch) otherwise."""
    if isinstance(batch, dict):
        names = inspect.signature(module.forward).parameters
        return module(**{k: v for k, v in batch.items() if k in names})
    if isinstance(batch, (tuple, list)):
        return module(*batch)
    return module(batch)


def restore_quantization(module: nn.Module, checkpoint: dict) -> QuantReport | None:
    """Re-attach the recipe stored in a QAT checkpoint to `module` (before load_state_dict).

    Returns the report, or None when the checkpoint holds no quantization (a float model).
    """
    recipe = recipe_of_checkpoint(checkpoint)
    if recipe is None:
        return None
    return attach_fake_quant(module, recipe, scales=scales_of_checkpoint(checkpoint))
