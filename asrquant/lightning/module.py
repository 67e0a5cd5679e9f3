"""LightningModule that trains and evaluates a ConformerCTC with the CTC loss."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from asrquant.checks import check_choice, check_number
from asrquant.data.tokenizer import tokenizer_from_state as default_tokenizer_from_state
from asrquant.io import atomic_write_text
from asrquant.lightning.metrics import corpus_cer, corpus_wer
from asrquant.models.conformer_ctc import ConformerCTC, ConformerCTCConfig
from asrquant.models.decoding import GreedyDecoder

SCHEDULES = ("noam", "cosine")
# What load_for_inference needs besides Lightning's own checkpoint content.
INFERENCE_CHECKPOINT_KEYS = ("state_dict", "model_config", "tokenizer_state")


class Tokenizer(Protocol):
    """What ASRModule needs from a tokenizer (implemented in asrquant.data.tokenizer)."""

    vocab_size: int  # including the blank
    blank_id: int  # must be 0

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def to_state(self) -> dict[str, Any]: ...


class Decoder(Protocol):
    """(B, T, V) CTC log-probs and (B,) valid frames -> one transcript per utterance.
    `asrquant.models.GreedyDecoder` (the default) and
    `asrquant.models.lexicon_decoding.LexiconBeamDecoder` are two."""

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[str]: ...


class UtteranceResult(NamedTuple):
    id: str
    ref: str  # normalised
    hyp: str  # normalised
    loss: float  # CTC loss / reference tokens


def identity(text: str) -> str:
    return text


def lr_factor(
    step: int,
    *,
    schedule: str,
    warmup_steps: int,
    total_steps: int | None,
    min_lr_ratio: float,
) -> float:
    """Multiplier of the peak lr after `step` optimizer steps (LambdaLR convention, from 0).

    Both schedules warm up linearly to the peak over `warmup_steps` steps; then "noam" decays
    as the inverse square root of the step and "cosine" follows a half cosine down to
    `min_lr_ratio` at `total_steps`. Neither goes below `min_lr_ratio`.
    """
    steps_done = step + 1
    if steps_done < warmup_steps:
        return steps_done / warmup_steps
    if schedule == "noam":
        decay = math.sqrt(max(warmup_steps, 1) / steps_done)
    elif schedule == "cosine":
        assert total_steps is not None
        progress = min(1.0, (steps_done - warmup_steps) / max(1, total_steps - warmup_steps))
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        decay = min_lr_ratio + (1.0 - min_lr_ratio) * decay
    else:
        raise ValueError(f"unknown schedule {schedule!r}; allowed: {list(SCHEDULES)}")
    return max(min_lr_ratio, decay)


class ASRModule(L.LightningModule):
    """Trains a ConformerCTC with CTC loss; validates/tests with `decoder`, corpus WER/CER.

    Batches are dicts as made by asrquant.data's collate: "audio" (B, T) float32 16 kHz,
    "audio_lens" (B,), "targets" (B, L) token ids, "target_lens" (B,), "texts" (normalised
    reference strings) and "ids".

    Training logs `train/loss` (CTC loss per reference token, averaged over the batch) and
    `train/lr`. AdamW (no weight decay on biases and norms) runs with a per-step warm-up + decay
    schedule (see `lr_factor`). Gradient clipping is not done here: set it on the Trainer,
    e.g. `Trainer(gradient_clip_val=1.0)`.

    Each validation/test epoch collects (id, ref, hyp) of every utterance of a split, then logs
    corpus-level `val/wer`, `val/cer`, `val/loss`, `test/wer`, `test/cer` (`test/<name>/wer`
    etc. with several loaders, named by `test_set_names` / `val_set_names`), keeps them in
    `self.last_results` (name -> {"wer", "cer", "loss", "words", "utterances"}), and, if
    `predictions_dir` is set, writes `<stage>_<name>_epoch<k>.tsv` (header, then id, ref, hyp).
    `normalize` is applied to references and hypotheses before scoring. `decoder` turns the
    model's log-probs into transcripts (validation, test, `transcribe`); default greedy CTC.
    It is not saved in checkpoints: set `module.decoder` on a loaded module to change it.

    Checkpoints carry the model config and tokenizer state; rebuild a decoder from one with
    `ASRModule.load_for_inference` (not Lightning's `load_from_checkpoint`).
    """

    def __init__(
        self,
        model_config: ConformerCTCConfig | dict[str, Any],
        tokenizer: Tokenizer,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.98),
        warmup_steps: int = 1000,
        schedule: str = "noam",
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        normalize: Callable[[str], str] | None = None,
        predictions_dir: str | os.PathLike | None = None,
        val_set_names: Sequence[str] | None = None,
        test_set_names: Sequence[str] | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model_config, dict):
            model_config = ConformerCTCConfig.from_dict(model_config)
        if tokenizer.blank_id != 0:
            raise ValueError(f"tokenizer.blank_id={tokenizer.blank_id}; CTC here needs blank 0")
        if tokenizer.vocab_size != model_config.vocab_size:
            raise ValueError(
                f"tokenizer.vocab_size={tokenizer.vocab_size} but "
                f"model_config.vocab_size={model_config.vocab_size}"
            )
        check_choice("schedule", schedule, SCHEDULES)
        check_number("lr", lr, gt=0)
        check_number("weight_decay", weight_decay, ge=0)
        check_number("warmup_steps", warmup_steps, ge=0, integer=True)
        check_number("min_lr_ratio", min_lr_ratio, ge=0, le=1)
        check_number("total_steps", total_steps, gt=0, integer=True, none_ok=True)
        if total_steps is not None and total_steps <= warmup_steps:
            raise ValueError(f"total_steps={total_steps} must be > warmup_steps={warmup_steps}")
        if len(betas) != 2:
            raise ValueError(f"betas={betas} must be two numbers")

        self.model = ConformerCTC(model_config)
        self.tokenizer = tokenizer
        self.normalize = normalize or identity
        self.decoder = decoder or GreedyDecoder(tokenizer)
        self.predictions_dir = Path(predictions_dir) if predictions_dir is not None else None
        self.set_names = {
            "val": list(val_set_names) if val_set_names else None,
            "test": list(test_set_names) if test_set_names else None,
        }
        self.last_results: dict[str, dict[str, float | int]] = {}
        self._results: dict[tuple[str, int], list[UtteranceResult]] = {}
        # Plain values only: checkpoints must stay loadable with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "model_config": model_config.to_dict(),
                "lr": lr,
                "weight_decay": weight_decay,
                "betas": [float(b) for b in betas],
                "warmup_steps": warmup_steps,
                "schedule": schedule,
                "total_steps": total_steps,
                "min_lr_ratio": min_lr_ratio,
                "predictions_dir": str(predictions_dir) if predictions_dir is not None else None,
                "val_set_names": self.set_names["val"],
                "test_set_names": self.set_names["test"],
            }
        )

    def forward(self, audio: Tensor, audio_lens: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(audio, audio_lens)

    # ----------------------------------------------------------------------------- training

    def ctc_loss_per_utterance(
        self, log_probs: Tensor, out_lens: Tensor, targets: Tensor, target_lens: Tensor
    ) -> Tensor:
        """(B,) CTC loss of each utterance divided by its number of reference tokens."""
        losses = F.ctc_loss(
            log_probs.transpose(0, 1),  # ctc_loss wants (T, B, V)
            targets,
            out_lens,
            target_lens,
            blank=0,
            reduction="none",
            zero_infinity=True,
        )
        return losses / target_lens.clamp(min=1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if batch["audio"].size(0) == 0:  # the collate drops unreadable items; all may fail
            return None  # Lightning skips the optimizer step
        teacher = self.__dict__.get("_teacher")
        if teacher is None:
            log_probs, out_lens = self.model(batch["audio"], batch["audio_lens"])
        else:  # one set of (augmented) features for both: the teacher sees what the student saw
            feats, feat_lens = self.model.compute_features(batch["audio"], batch["audio_lens"])
            log_probs, out_lens = self.model.forward_features(feats, feat_lens)
        loss = self.ctc_loss_per_utterance(
            log_probs, out_lens, batch["targets"], batch["target_lens"]
        ).mean()
        batch_size = batch["audio"].size(0)
        if teacher is not None:
            with torch.no_grad():
                teacher_lp, _ = teacher.forward_features(feats, feat_lens)
            kd = distillation_loss(log_probs, teacher_lp, out_lens, self._kd["temperature"])
            self.log("train/ctc", loss, batch_size=batch_size)
            self.log("train/kd", kd, batch_size=batch_size)
            loss = loss + self._kd["weight"] * kd
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log("train/lr", lr, batch_size=batch_size)
        return loss

    def set_teacher(self, teacher: nn.Module | None, weight: float = 1.0,
                    temperature: float = 1.0) -> None:
        """Distillation: training adds `weight` * KL(teacher || student) on frame posteriors
        at `temperature` (see `distillation_loss`) to the CTC loss. The teacher (e.g. the float
        ConformerCTC a QAT run starts from) takes the student's features, SpecAugment
        included (`forward_features`), so the two see the same input; it is frozen, kept in
        eval mode (no dropout) and is not part of the state dict. None: no distillation."""
        check_number("kd weight", weight, ge=0)
        check_number("kd temperature", temperature, gt=0)
        if teacher is not None:
            if not callable(getattr(teacher, "forward_features", None)):
                raise ValueError(f"teacher {type(teacher).__name__} has no forward_features("
                                 "feats, feat_lens); allowed: a ConformerCTC")
            teacher.eval().requires_grad_(False)
        self.__dict__["_teacher"] = teacher  # not a submodule: no optimizer, no checkpoint
        self._kd = {"weight": float(weight), "temperature": float(temperature)}

    def on_fit_start(self) -> None:
        teacher = self.__dict__.get("_teacher")
        if teacher is not None:
            teacher.to(self.device).eval()

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        # nanoGPT-style: decay matrices and conv kernels, not biases, norms or scalars, nor
        # learned quantization scales and zero points (QAT with qat.scales=learned).
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        qparam = lambda n: ".parametrizations." in n and n.endswith((".scale", ".zero_point"))
        groups = [
            {"params": [p for n, p in named if p.dim() >= 2 and not qparam(n)],
             "weight_decay": hp.weight_decay},
            {"params": [p for n, p in named if p.dim() < 2 or qparam(n)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        schedule = partial(
            lr_factor,
            schedule=hp.schedule,
            warmup_steps=hp.warmup_steps,
            total_steps=self._cosine_total_steps() if hp.schedule == "cosine" else None,
            min_lr_ratio=hp.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def _cosine_total_steps(self) -> int:
        total = self.hparams.total_steps
        if total is None:
            estimated = self.trainer.estimated_stepping_batches
            if not math.isfinite(estimated):
                raise ValueError(
                    "the cosine schedule needs total_steps (or a Trainer with max_steps or "
                    "max_epochs and a sized train loader)"
                )
            total = int(estimated)
        if total <= self.hparams.warmup_steps:
            raise ValueError(
                f"cosine schedule: total_steps={total} must be > "
                f"warmup_steps={self.hparams.warmup_steps}"
            )
        return total

    # --------------------------------------------------------------------- validation / test

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        self._collect_results("val", batch, dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        self._collect_results("test", batch, dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        self._drop_results("val")

    def on_test_epoch_start(self) -> None:
        self._drop_results("test")

    def on_validation_epoch_end(self) -> None:
        results = self._drop_results("val")
        if not self.trainer.sanity_checking:
            self._score_split("val", results)

    def on_test_epoch_end(self) -> None:
        self._score_split("test", self._drop_results("test"))

    def _collect_results(self, stage: str, batch: dict[str, Any], dataloader_idx: int) -> None:
        if batch["audio"].size(0) == 0:
            return
        log_probs, out_lens = self.model(batch["audio"], batch["audio_lens"])
        losses = self.ctc_loss_per_utterance(
            log_probs, out_lens, batch["targets"], batch["target_lens"]
        )
        hyps = self.decoder(log_probs, out_lens)
        results = self._results.setdefault((stage, dataloader_idx), [])
        for utt_id, ref, hyp, loss in zip(
            batch["ids"], batch["texts"], hyps, losses.tolist(), strict=True
        ):
            results.append(UtteranceResult(utt_id, self.normalize(ref), self.normalize(hyp), loss))

    def _drop_results(self, stage: str) -> dict[int, list[UtteranceResult]]:
        """Remove and return this stage's collected results, by dataloader index."""
        keys = [key for key in self._results if key[0] == stage]
        return {key[1]: self._results.pop(key) for key in sorted(keys)}

    def _score_split(self, stage: str, results: dict[int, list[UtteranceResult]]) -> None:
        results = _gather_across_processes(results)
        names = self.set_names[stage]
        if names is not None and results and max(results) >= len(names):
            raise ValueError(
                f"{stage} dataloader {max(results)} has no name: "
                f"{stage}_set_names={names} names only {len(names)}"
            )
        num_loaders = len(names) if names is not None else max(results, default=0) + 1
        for loader_idx, split_results in results.items():
            if names is not None:
                name = names[loader_idx]
            elif num_loaders == 1:
                name = "dev" if stage == "val" else "test"
            else:
                name = f"loader{loader_idx}"
            prefix = f"{stage}/{name}/" if num_loaders > 1 else f"{stage}/"
            refs = [r.ref for r in split_results]
            hyps = [r.hyp for r in split_results]
            wer, cer = corpus_wer(refs, hyps), corpus_cer(refs, hyps)
            loss = sum(r.loss for r in split_results) / len(split_results)
            self.log(prefix + "wer", wer.rate)
            self.log(prefix + "cer", cer.rate)
            self.log(prefix + "loss", loss)
            self.last_results[name] = {
                "wer": wer.rate,
                "cer": cer.rate,
                "loss": loss,
                "words": wer.ref_length,
                "utterances": len(split_results),
            }
            if self.predictions_dir is not None and self.trainer.is_global_zero:
                path = self.predictions_dir / f"{stage}_{name}_epoch{self.current_epoch}.tsv"
                write_predictions(path, split_results)

    # -------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["model_config"] = self.model.config.to_dict()
        checkpoint["tokenizer_state"] = self.tokenizer.to_state()

    @classmethod
    def load_for_inference(
        cls,
        path: str | os.PathLike,
        map_location: str | torch.device = "cpu",
        tokenizer_from_state: Callable[[dict[str, Any]], Tokenizer] | None = None,
        normalize: Callable[[str], str] | None = None,
    ) -> ASRModule:
        """Rebuild a module in eval mode from a checkpoint saved by a Trainer.

        The file is read with `torch.load(weights_only=True)`, so it cannot run code.
        `tokenizer_from_state` rebuilds the tokenizer (default:
        `asrquant.data.tokenizer.tokenizer_from_state`).
        """
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(checkpoint, dict):
            raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
        missing = [key for key in INFERENCE_CHECKPOINT_KEYS if key not in checkpoint]
        if missing:
            raise ValueError(
                f"{path} is not an ASRModule checkpoint: missing {missing} "
                f"(it has {sorted(checkpoint)})"
            )
        tokenizer = (tokenizer_from_state or default_tokenizer_from_state)(
            checkpoint["tokenizer_state"])
        module = cls(checkpoint["model_config"], tokenizer, normalize=normalize)
        module.load_state_dict(checkpoint["state_dict"])
        if isinstance(map_location, str | torch.device):
            module.to(map_location)
        return module.eval()

    # ---------------------------------------------------------------------------- inference

    @torch.no_grad()
    def transcribe(self, audio_list: Sequence[Tensor], batch_size: int = 16) -> list[str]:
        """Transcripts (by `self.decoder`) of 1-D 16 kHz waveforms (any length >=
        MIN_AUDIO_SAMPLES)."""
        for index, audio in enumerate(audio_list):
            if audio.dim() != 1:
                raise ValueError(
                    f"audio {index} has shape {tuple(audio.shape)}; expected 1-D (samples,)"
                )
        was_training = self.training
        self.eval()
        texts: list[str] = []
        try:
            for start in range(0, len(audio_list), batch_size):
                chunk = [a.to(self.device, torch.float32) for a in audio_list[start:][:batch_size]]
                audio_lens = torch.tensor([a.numel() for a in chunk], device=self.device)
                log_probs, out_lens = self.model(pad_sequence(chunk, batch_first=True), audio_lens)
                texts += self.decoder(log_probs, out_lens)
        finally:
            self.train(was_training)
        return texts


def distillation_loss(student_lp: Tensor, teacher_lp: Tensor, lengths: Tensor,
                      temperature: float = 1.0) -> Tensor:
    """Mean over valid frames of KL(p_teacher || p_student) with both posteriors softened
    by `temperature` (log-probs (B, T, V) in; frames t < lengths[b] count), times T^2 so
    that its gradients keep their size as T changes (Hinton et al., 2015). Zero when the
    student's posteriors equal the teacher's."""
    if student_lp.shape != teacher_lp.shape:
        raise ValueError(f"distillation: student log-probs {tuple(student_lp.shape)} and "
                         f"teacher log-probs {tuple(teacher_lp.shape)} differ in shape")
    t = float(temperature)
    s = F.log_softmax(student_lp / t, dim=-1)
    p = F.log_softmax(teacher_lp / t, dim=-1)
    kl = (p.exp() * (p - s)).sum(-1)  # (B, T)
    mask = torch.arange(kl.shape[1], device=kl.device)[None, :] < lengths[:, None]
    return (kl * mask).sum() / mask.sum().clamp(min=1) * t * t


def write_predictions(path: Path, results: Sequence[UtteranceResult]) -> None:
    """Write `id\\tref\\thyp` lines (after a header) atomically: a reader never sees half a file."""
    lines = ["id\tref\thyp"]
    for r in results:
        lines.append("\t".join(_one_line(field) for field in (r.id, r.ref, r.hyp)))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _one_line(text: str) -> str:
    return " ".join(text.replace("\t", " ").splitlines())


def _gather_across_processes(
    results: dict[int, list[UtteranceResult]],
) -> dict[int, list[UtteranceResult]]:
    """Under multi-process (DDP) evaluation, merge every rank's results so that each computes
    the corpus metrics of the whole split. Untouched in a single process."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return results
    per_rank: list[dict[int, list[UtteranceResult]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, results)
    merged: dict[int, dict[str, UtteranceResult]] = {}
    for rank_results in per_rank:
        for loader_idx, loader_results in (rank_results or {}).items():
            for r in loader_results:
                # keyed by id: DistributedSampler repeats utterances to even out the ranks
                merged.setdefault(loader_idx, {})[r.id] = r
    return {idx: list(by_id.values()) for idx, by_id in sorted(merged.items())}
