"""`asrquant-transcribe`: greedy CTC transcripts of audio files and JSONL manifests by a model
file, printed (path<TAB>text) or written as JSONL with WER/CER where references exist.

Model files: a float checkpoint (Lightning `.ckpt`, or a float `.safetensors` such as
"pretrained:<name>"), optionally fake-quantized by a `conf/quant` recipe (PTQ, round to
nearest: bit-exact with the packed file asrquant-export writes from it); a QAT checkpoint
(its own recipe); a packed `.safetensors` file (asrquant-export, weights kept packed); an
exported `.onnx` file run by onnxruntime (pip install 'asrquant[onnx]').

Audio (wav, flac, ogg; any sample rate, mono or stereo) is read by `read_audio`: averaged to
mono, resampled to 16 kHz. A file or manifest line that cannot be used is named in one line
on stderr; the others are transcribed and written either way, and under policy "error" the
run then fails (exit status 1), under "skip" it succeeds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from asrquant.data.audio import SAMPLE_RATE, AudioError, BadDataError, read_audio
from asrquant.data.readers import check_policy, entry_audio_and_id, manifest_entries
from asrquant.data.text import normalize_text
from asrquant.export import load_quantized
from asrquant.export.onnx import load_onnx
from asrquant.io import atomic_write_text, config_dir, model_path
from asrquant.lightning.metrics import corpus_cer, corpus_wer
from asrquant.lightning.module import ASRModule
from asrquant.models import MIN_AUDIO_SAMPLES
from asrquant.quant import QuantRecipe, attach_fake_quant, detach_fake_quant, fake_quant_specs
from asrquant.quant.packed import PackedWeight
from asrquant.runs.blocks import load_checkpoint, module_from_checkpoint
from asrquant.runs.common import calibration_of, recipe_of

MODEL_SUFFIXES = (".ckpt", ".safetensors", ".onnx")
MANIFEST_SUFFIXES = (".jsonl", ".json")
PROG = "asrquant-transcribe"


# -- the model -------------------------------------------------------------------------------
def recipe_names() -> list[str]:
    """The recipes of conf/quant (what `quant=<name>` takes)."""
    return sorted(p.stem for p in (config_dir() / "quant").glob("*.yaml")
                  if not p.stem.startswith("_"))


def named_recipe(name: str, overrides: Sequence[str] = ()) -> QuantRecipe | None:
    """The recipe `quant=<name>` (+ `quant.<key>=<value>` overrides) composes to, as
    asrquant-eval would; None for float. Calibration methods (quant.method=gptq, ...) need
    training data and are refused."""
    names = recipe_names()
    if name not in names:
        raise ValueError(f"quant recipe {name!r} is not in {config_dir() / 'quant'}; allowed: "
                         f"{', '.join(names)}")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"quant override {item!r} is not KEY=VALUE; e.g. group_size=64")
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("eval", overrides=[f"quant={name}", *(f"quant.{o}" for o in overrides)])
    except HydraException as e:
        fields = sorted(OmegaConf.load(config_dir() / "quant" / "_base.yaml"))
        raise ValueError(f"quant={name} with overrides {list(overrides)}: "
                         f"{str(e).strip().splitlines()[0]} Recipe fields: {', '.join(fields)}"
                         ) from None
    cfg = {"quant": OmegaConf.to_container(cfg.quant, resolve=True)}
    if calibration_of(cfg) is not None:
        method = cfg["quant"]["method"]
        raise ValueError(f"quant.method={method!r} is a calibration method, which needs training "
                         "data; transcribe quantizes by round to nearest (method rtn) only: run "
                         f"asrquant-eval ckpt=... quant={name} quant.method={method} export=true "
                         "and transcribe its packed model.safetensors")
    return recipe_of(cfg)


def load_model_file(path: str | os.PathLike, threads: int = 2,
                    recipe: QuantRecipe | None = None) -> ASRModule:
    """An eval-mode recognizer from a model file (see the module docstring); `recipe`
    fake-quantizes a float model (its weights quantized once, not on every forward)."""
    file = model_path(path)
    if not file.is_file():
        where = "" if str(file) == str(path) else f" ({file})"
        raise FileNotFoundError(f"model file {str(path)!r}{where} does not exist")
    if file.suffix not in MODEL_SUFFIXES:
        raise ValueError(f"model file {str(path)!r} has suffix {file.suffix!r}; allowed: "
                         f"{', '.join(MODEL_SUFFIXES)}")

    def carries_its_own_recipe(what: str) -> ValueError:
        return ValueError(f"model file {str(path)!r} is {what}: it carries its own recipe; "
                          f"transcribe it without a quant recipe (given: {recipe.name!r})")

    if file.suffix == ".onnx":
        if recipe is not None:
            raise carries_its_own_recipe("an ONNX export")
        return load_onnx(file, threads=threads)
    torch.set_num_threads(threads)
    if file.suffix == ".safetensors":
        module = load_quantized(file)  # float or packed
        if recipe is not None and any(isinstance(m, PackedWeight) for m in module.modules()):
            raise carries_its_own_recipe("packed (quantized)")
    else:
        module = module_from_checkpoint(load_checkpoint(file))
        if recipe is not None and fake_quant_specs(module):
            raise carries_its_own_recipe("a quantization-aware (QAT) checkpoint")
    if recipe is not None:
        attach_fake_quant(module, recipe)
    detach_fake_quant(module, bake=True)  # the recipe's (or the QAT checkpoint's) values, once
    return module.eval()


# -- the inputs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    id: str
    audio_path: str
    ref: str | None = None  # the manifest's transcript, normalised; None: no reference


@dataclass(frozen=True)
class Transcript:
    item: Item
    text: str
    duration: float  # seconds


OnBad = Callable[[BadDataError], None]


def _raise(error: BadDataError) -> None:
    raise error


def items_of(inputs: Sequence[str | os.PathLike], on_bad: OnBad = _raise) -> list[Item]:
    """The utterances of the inputs, in order: an audio file is one (id: its stem); a JSONL
    manifest (.jsonl/.json) gives one per line (see `manifest_items`)."""
    items: list[Item] = []
    for source in inputs:
        if Path(source).suffix in MANIFEST_SUFFIXES:
            items += manifest_items(source, on_bad)
        else:
            items.append(Item(Path(source).stem, str(source)))
    return items


def manifest_items(path: str | os.PathLike, on_bad: OnBad = _raise) -> Iterator[Item]:
    """The lines of a NeMo-style JSONL manifest, read as asrquant.data.readers does (relative
    "audio_filepath" against the manifest's folder; id: "id", else that path without its
    extension), except that "text" (the reference) and "duration" are optional here. A line
    that is not a JSON object with "audio_filepath" goes to `on_bad`, naming it."""
    for where, entry in manifest_entries(path):  # a missing manifest: FileNotFoundError
        if isinstance(entry, BadDataError):
            on_bad(entry)
            continue
        if not isinstance(entry.get("audio_filepath"), str):
            on_bad(BadDataError(f"{where}: expected a JSON object with 'audio_filepath', "
                                f"got keys {sorted(entry)}"))
            continue
        audio, utt_id = entry_audio_and_id(path, entry)
        text = entry.get("text")
        ref = normalize_text(text) if isinstance(text, str) else ""
        yield Item(utt_id, str(audio), ref or None)


def read_item(item: Item) -> torch.Tensor:
    """The item's audio at 16 kHz, mono; AudioError when it is unusable or too short."""
    wave = read_audio(item.audio_path)
    if wave.numel() < MIN_AUDIO_SAMPLES:
        raise AudioError(item.audio_path, f"too short: {wave.numel()} samples at "
                         f"{SAMPLE_RATE} Hz; at least {MIN_AUDIO_SAMPLES} "
                         f"({MIN_AUDIO_SAMPLES / SAMPLE_RATE * 1000:.0f} ms) are needed")
    return wave


# -- transcribing ----------------------------------------------------------------------------
def transcribe_items(module: ASRModule, items: Sequence[Item], batch_size: int = 8,
                     on_bad: OnBad = _raise, progress: bool = False,
                     stream=None) -> Iterator[Transcript]:
    """Transcripts of the items, in order, `batch_size` files read and decoded at a time (a
    tqdm bar on `stream` with `progress`). Unusable audio goes to `on_bad` and is left out."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    with tqdm(total=len(items), unit="file", desc="transcribing", disable=not progress,
              file=stream or sys.stderr, leave=False) as bar:
        for start in range(0, len(items), batch_size):
            batch, waves = [], []
            for item in items[start:start + batch_size]:
                try:
                    waves.append(read_item(item))
                    batch.append(item)
                except AudioError as e:
                    on_bad(e)
            if waves:
                with torch.no_grad():
                    texts = module.transcribe(waves, batch_size=len(waves))
                for item, wave, text in zip(batch, waves, texts, strict=True):
                    yield Transcript(item, text, wave.numel() / SAMPLE_RATE)
            bar.update(min(batch_size, len(items) - start))


def transcribe_files(model: str | os.PathLike, audio: list[str | os.PathLike],
                     threads: int = 2, batch_size: int = 8) -> list[tuple[str, str]]:
    """(audio path, transcript) for each file, in order; a bad file raises AudioError naming
    it."""
    if not audio:
        raise ValueError("no audio files given")
    module = load_model_file(model, threads)
    return [(str(t.item.audio_path), t.text)
            for t in transcribe_items(module, [Item(Path(p).stem, str(p)) for p in audio],
                                      batch_size)]


def json_line(t: Transcript) -> dict:
    """One line of the JSONL output: id, audio_filepath, text (the hypothesis), duration;
    with a reference also ref (normalised, as scored), wer and cer."""
    line = {"id": t.item.id, "audio_filepath": t.item.audio_path, "text": t.text,
            "duration": round(t.duration, 4)}
    if t.item.ref is not None:
        hyp = normalize_text(t.text)
        line.update(ref=t.item.ref, wer=corpus_wer([t.item.ref], [hyp]).rate,
                    cer=corpus_cer([t.item.ref], [hyp]).rate)
    return line


def summary(done: list[Transcript], bad: list[BadDataError], seconds: float) -> str:
    """One line: files, audio, skipped, wall time and (over the files with a reference)
    corpus WER and CER."""
    scored = [t for t in done if t.item.ref is not None]
    text = (f"{PROG}: {len(done)} file(s) transcribed ({sum(t.duration for t in done):.1f} s "
            f"of audio in {seconds:.1f} s), {len(bad)} bad")
    if scored:
        refs = [t.item.ref for t in scored]
        hyps = [normalize_text(t.text) for t in scored]
        wer, cer = corpus_wer(refs, hyps), corpus_cer(refs, hyps)
        text += (f"; WER {wer.rate:.2%} ({wer.errors}/{wer.ref_length} words), CER "
                 f"{cer.rate:.2%} ({cer.errors}/{cer.ref_length} characters) over the "
                 f"{len(scored)} file(s) with a reference")
    return text


def run_transcribe(model: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                   out: str | os.PathLike | None = None, quant: str | None = None,
                   quant_overrides: Sequence[str] = (), policy: str = "error",
                   threads: int = 2, batch_size: int = 8, quiet: bool = False) -> int:
    """Transcribe `inputs` (audio files, JSONL manifests) with `model`; print path<TAB>text
    per file, or write JSONL to `out` (atomically). Returns the exit status: 0, or 1 when a
    file or line was bad under policy "error" or nothing could be transcribed."""
    check_policy(policy, "policy")
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} must be >= 1")
    if out is not None and Path(out).is_dir():
        raise ValueError(f"output {str(out)!r} is a folder; give a file name, e.g. out.jsonl")
    started = time.perf_counter()
    stdout, stderr = sys.stdout, sys.stderr
    bad: list[BadDataError] = []

    def note(error: BadDataError) -> None:
        bad.append(error)
        tqdm.write(f"{PROG}: {'skipped' if policy == 'skip' else 'failed'}: {error}",
                   file=stderr)

    if quant_overrides and not quant:
        raise ValueError(f"quant overrides {list(quant_overrides)} given without a quant recipe")
    recipe = named_recipe(quant, quant_overrides) if quant else None
    items = items_of(inputs, note)
    module = load_model_file(model, threads, recipe)
    done = []
    for t in transcribe_items(module, items, batch_size, note,
                              progress=not quiet and stderr.isatty(), stream=stderr):
        done.append(t)
        if out is None:
            print(f"{t.item.audio_path}\t{t.text}", file=stdout, flush=True)
    if out is not None:
        atomic_write_text(out, "".join(json.dumps(json_line(t)) + "\n" for t in done))
    if not quiet:
        print(summary(done, bad, time.perf_counter() - started), file=stderr)
    if not done:
        print(f"{PROG}: no file could be transcribed ({len(bad)} bad)", file=stderr)
        return 1
    return 1 if bad and policy == "error" else 0

