"""A built-in synthetic speech corpus: random English sentences spoken by eSpeak NG.

The corpus needs no download: libespeak-ng and its voice data come from the `espeakng-loader`
wheel and are driven through ctypes. Sentences come from a small seeded grammar over a few
hundred words ("the green dog runs over seven small boxes"). Each utterance gets a random voice
(an English accent plus a voice variant), speaking rate and pitch, and optionally white noise.

Splits: train, dev and test use the same voices; test_heldout_voices uses voice variants that
never occur in train. No sentence occurs in two splits.

libespeak-ng keeps global state (pitch-flutter phase, random generator), so an utterance's
samples depend on what the library synthesised before. The corpus is therefore always written
by a fresh child process, sequentially in a fixed order: the same config gives byte-identical
files.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
from tqdm import tqdm

from asrquant.data.audio import SAMPLE_RATE
from asrquant.io import atomic_path, atomic_write_text, cache_dir

log = logging.getLogger(__name__)

CORPUS_VERSION = 1  # bump when the generator, voices or file format change
COMPLETE_MARKER = "_COMPLETE"
MAX_PEAK = 0.95  # of full scale
SPLITS = ("train", "dev", "test", "test_heldout_voices")

# ---------------------------------------------------------------------------------------------
# Sentence generator

SINGULAR_DETERMINERS = ["the", "a", "this", "that", "every", "my", "your", "his", "her", "our"]
PLURAL_DETERMINERS = ["the", "these", "those", "some", "many", "my", "your", "our", "their"]
NUMBERS = [
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "twenty", "thirty", "forty", "fifty",
]  # fmt: skip
# Nouns and verbs take regular -s/-es/-ies endings (see plural_or_third_person).
NOUNS = [
    "dog", "cat", "bird", "horse", "cow", "pig", "fox", "rabbit", "lion", "tiger", "bear",
    "duck", "frog", "snake", "whale", "turtle", "spider", "bee", "ant", "elephant", "owl",
    "monkey", "eagle", "box", "bus", "car", "train", "boat", "ship", "plane", "truck", "wagon",
    "bicycle", "house", "garden", "window", "door", "table", "chair", "bed", "lamp", "clock",
    "book", "letter", "pencil", "paper", "bottle", "cup", "glass", "plate", "spoon", "fork",
    "apple", "orange", "banana", "lemon", "cherry", "berry", "carrot", "onion", "flower", "tree",
    "river", "lake", "hill", "mountain", "road", "bridge", "city", "village", "town", "field",
    "forest", "island", "beach", "ocean", "cloud", "star", "moon", "planet", "rocket", "robot",
    "computer", "phone", "camera", "picture", "song", "story", "game", "ball", "toy", "kite",
    "drum", "guitar", "piano", "radio", "teacher", "doctor", "farmer", "driver", "artist",
    "student", "baby", "girl", "boy", "king", "queen", "sailor", "singer", "friend", "neighbor",
    "jacket", "hat", "shoe", "coat", "bag", "basket", "blanket", "candle", "key", "ring", "coin",
    "watch", "brush", "dish", "church", "bench", "fence", "wall", "ladder", "bucket", "hammer",
    "rope", "wheel", "tent", "castle", "tower", "engine", "egg", "umbrella",
]  # fmt: skip
INTRANSITIVE_VERBS = [
    "run", "jump", "walk", "sleep", "sit", "stand", "wait", "swim", "fly", "climb", "dance",
    "sing", "hide", "rest", "play", "roll", "fall", "float", "shine", "turn", "stop", "shake",
    "smile", "laugh", "travel", "march", "crawl", "hurry", "arrive", "glow",
]  # fmt: skip
TRANSITIVE_VERBS = [
    "see", "find", "watch", "carry", "push", "pull", "catch", "throw", "kick", "paint", "build",
    "draw", "hold", "open", "close", "wash", "fix", "follow", "lift", "drop", "touch", "bring",
    "want", "like", "love", "need", "buy", "sell", "clean", "count", "cook", "fill", "keep",
    "miss", "move", "pack", "pick", "ride", "send", "visit", "help", "call", "chase", "hug",
]  # fmt: skip
ADJECTIVES = [
    "big", "small", "little", "tall", "short", "long", "old", "young", "new", "red", "green",
    "blue", "yellow", "black", "white", "brown", "pink", "gray", "purple", "happy", "sad",
    "angry", "quiet", "loud", "fast", "slow", "hot", "cold", "warm", "soft", "hard", "heavy",
    "light", "dark", "bright", "clean", "dirty", "empty", "full", "round", "sweet", "brave",
    "busy", "funny", "lazy", "lucky", "tiny", "huge", "shiny", "wooden", "friendly", "gentle",
    "clever", "strange", "famous", "hungry", "sleepy", "wet", "dry", "odd",
]  # fmt: skip
ADVERBS = [
    "quickly", "slowly", "quietly", "loudly", "happily", "sadly", "carefully", "gently",
    "today", "again", "suddenly", "early", "late", "soon", "together", "alone", "there", "here",
    "yesterday", "tonight",
]  # fmt: skip
PREPOSITIONS = [
    "over", "under", "near", "behind", "beside", "across", "along", "around", "through", "into",
    "onto", "toward", "past", "inside", "outside", "above", "below", "from", "with", "without",
    "on", "in", "by", "at",
]  # fmt: skip


def plural_or_third_person(word: str) -> str:
    """Regular English -s form: box -> boxes, city -> cities, boy -> boys, run -> runs."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _choice(rng: np.random.Generator, words: list[str]) -> str:
    return words[rng.integers(len(words))]


def _noun_phrase(rng: np.random.Generator) -> tuple[list[str], bool]:
    """Returns the words of a random noun phrase and whether it is plural."""
    plural = rng.random() < 0.5
    n_adjectives = rng.choice([0, 1, 2], p=[0.45, 0.4, 0.15])
    adjectives = [_choice(rng, ADJECTIVES) for _ in range(n_adjectives)]
    noun = _choice(rng, NOUNS)
    if plural:
        determiner = _choice(rng, NUMBERS if rng.random() < 0.4 else PLURAL_DETERMINERS)
        return [determiner, *adjectives, plural_or_third_person(noun)], True
    determiner = _choice(rng, SINGULAR_DETERMINERS)
    following = adjectives[0] if adjectives else noun
    if determiner == "a" and following[0] in "aeiou":
        determiner = "an"
    return [determiner, *adjectives, noun], False


def random_sentence(rng: np.random.Generator, min_words: int = 4, max_words: int = 12) -> str:
    """A random sentence of min_words..max_words words: subject, verb, object/adverb/place."""
    while True:
        subject, plural = _noun_phrase(rng)
        if rng.random() < 0.5:
            verb = _choice(rng, INTRANSITIVE_VERBS)
            rest = []
            if rng.random() < 0.5:
                rest.append(_choice(rng, ADVERBS))
            if not rest or rng.random() < 0.7:
                rest += [_choice(rng, PREPOSITIONS), *_noun_phrase(rng)[0]]
        else:
            verb = _choice(rng, TRANSITIVE_VERBS)
            rest = _noun_phrase(rng)[0]
            ending = rng.random()
            if ending < 0.3:
                rest.append(_choice(rng, ADVERBS))
            elif ending < 0.6:
                rest += [_choice(rng, PREPOSITIONS), *_noun_phrase(rng)[0]]
        words = [*subject, verb if plural else plural_or_third_person(verb), *rest]
        if min_words <= len(words) <= max_words:
            return " ".join(words)


def unique_sentences(n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct random sentences, in generation order."""
    sentences: dict[str, None] = {}
    for _ in range(100 * n + 100):
        if len(sentences) == n:
            return list(sentences)
        sentences[random_sentence(rng)] = None
    raise RuntimeError(f"could not generate {n} distinct sentences")


# ---------------------------------------------------------------------------------------------
# Voices: an English accent + a voice variant ("en-gb-scotland+f3")

ACCENTS = [
    "en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
    "en-us-nyc",
]  # fmt: skip
# Human-sounding variants only (no robots, whispers or croaks). Held-out variants never occur in
# train, dev or test, so "held-out voices" means unseen timbres (with accents seen in training).
TRAIN_VARIANTS = [
    "m1", "m2", "m3", "m4", "m6", "m7", "f1", "f2", "f4", "f5", "Alex", "Andy", "Annie",
    "Denis", "Gene", "Jacky", "Lee", "Mario", "Mike", "aunty", "belinda", "boris", "gustave",
    "ian", "john", "max", "norbert", "pablo", "paul", "quincy", "steph", "travis",
]  # fmt: skip
HELDOUT_VARIANTS = [
    "m5", "m8", "f3", "Alicia", "Andrea", "linda", "Diogo", "Henrique", "marcelo", "michel",
    "robert", "victor",
]  # fmt: skip
RATE_WPM = (130, 200)
PITCH = (25, 75)  # eSpeak's 0-100 scale, 50 = the voice's normal pitch


def voices(variants: list[str]) -> list[str]:
    return [f"{accent}+{variant}" for accent in ACCENTS for variant in variants]


# ---------------------------------------------------------------------------------------------
# eSpeak NG through ctypes

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_ESPEAK_VOLUME = 2
_ESPEAK_PITCH = 3
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class ESpeak:
    """libespeak-ng in synchronous mode; `synthesize` returns int16 samples at `sample_rate`.

    The library has one global state per process: use the shared instance from `espeak()`.
    """

    _created = False

    def __init__(self, rand_seed: int = 0) -> None:
        import espeakng_loader

        if ESpeak._created:
            raise RuntimeError("libespeak-ng has one global state per process; use espeak()")
        ESpeak._created = True
        self.data_path = Path(espeakng_loader.get_data_path())
        self._lib = lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), 0
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data folder {self.data_path}")
        if hasattr(lib, "espeak_ng_SetRandSeed"):
            lib.espeak_ng_SetRandSeed(ctypes.c_long(rand_seed))
        self._chunks: list[bytes] = []
        self._callback = _SynthCallback(self._collect)  # kept alive: the library holds a pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _collect(self, samples, num_samples, events) -> int:
        if num_samples > 0 and samples:
            self._chunks.append(ctypes.string_at(samples, num_samples * 2))
        return 0  # 0 = continue synthesis

    def check_voice(self, voice: str) -> None:
        _, _, variant = voice.partition("+")
        if variant and not (self.data_path / "voices" / "!v" / variant).is_file():
            known = sorted(p.name for p in (self.data_path / "voices" / "!v").iterdir())
            raise ValueError(f"eSpeak voice variant {variant!r} (in {voice!r}) not in {known}")

    def synthesize(
        self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, volume: int = 60
    ) -> np.ndarray:
        """Speaks `text`; `rate` in words per minute (80-450), `pitch` 0-100 (50 normal),
        `volume` 0-200 (100 normal; some voices clip at 100, hence the lower default)."""
        self.check_voice(voice)
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"eSpeak has no voice {voice!r}")
            self._lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
            self._lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
            self._lib.espeak_SetParameter(_ESPEAK_VOLUME, int(volume), 0)
            self._chunks.clear()
            encoded = text.encode("utf-8")
            status = self._lib.espeak_Synth(
                encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
            )
            self._lib.espeak_Synchronize()
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed (status {status}) for {text!r}")
            samples = np.frombuffer(b"".join(self._chunks), dtype=np.int16).copy()
            self._chunks.clear()
        return samples


_espeak_instance: ESpeak | None = None


def espeak() -> ESpeak:
    """The process-wide eSpeak NG instance (created on first use)."""
    global _espeak_instance
    if _espeak_instance is None:
        _espeak_instance = ESpeak()
    return _espeak_instance


# ---------------------------------------------------------------------------------------------
# Corpus building


@dataclasses.dataclass(frozen=True)
class SyntheticCorpusConfig:
    n_train: int = 3000
    n_dev: int = 300
    n_test: int = 300
    n_test_voices: int = 300
    seed: int = 0
    noise_snr_db: float | None = None

    def split_sizes(self) -> dict[str, int]:
        sizes = (self.n_train, self.n_dev, self.n_test, self.n_test_voices)
        return dict(zip(SPLITS, sizes, strict=True))

    def config_hash(self) -> str:
        identity = {
            **dataclasses.asdict(self),
            "corpus_version": CORPUS_VERSION,
            "sample_rate": SAMPLE_RATE,
            "espeakng_loader": importlib.metadata.version("espeakng-loader"),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """$ASRQUANT_CACHE/synthetic, or ~/.cache/asrquant/synthetic."""
    return cache_dir("synthetic")


def is_complete(folder: Path, config_hash: str) -> bool:
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return marker.get("config_hash") == config_hash


def manifest_paths(folder: Path) -> dict[str, Path]:
    return {split: folder / f"{split}.jsonl" for split in SPLITS}


def build_synthetic_corpus(
    cache_dir: str | os.PathLike | None = None,
    n_train: int = 3000,
    n_dev: int = 300,
    n_test: int = 300,
    n_test_voices: int = 300,
    seed: int = 0,
    noise_snr_db: float | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Builds the corpus once into `cache_dir`/<config hash> and returns its manifests by split.

    Keys: "train", "dev", "test", "test_heldout_voices"; each a NeMo-style JSONL manifest with
    "audio_filepath" (relative), "duration", "text", plus "id", "voice", "rate", "pitch".
    Audio: 16 kHz mono int16 WAV. `cache_dir` defaults to default_cache_dir(). A folder without
    a `_COMPLETE` marker for this config (an interrupted build) is deleted and rebuilt. With
    `noise_snr_db`, white noise is added at that signal-to-noise ratio.
    """
    config = SyntheticCorpusConfig(n_train, n_dev, n_test, n_test_voices, seed, noise_snr_db)
    for name, value in [*config.split_sizes().items(), ("seed", seed)]:
        if value < 0:
            raise ValueError(f"synthetic corpus {name} = {value} must be >= 0")
    config_hash = config.config_hash()
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / config_hash
    if not is_complete(folder, config_hash):
        with _build_lock(folder):
            if not is_complete(folder, config_hash):  # another process may have just built it
                _build_in_child_process(folder, config, progress)
    return manifest_paths(folder)


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Serialises builds of one folder across processes (e.g. several DDP ranks)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock_file:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            yield
            return
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _build_in_child_process(folder: Path, config: SyntheticCorpusConfig, progress: bool) -> None:
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "asrquant.data.synthetic", "--write-into", str(folder),
        "--config", json.dumps(dataclasses.asdict(config)),
    ]  # fmt: skip
    if not progress:
        command.append("--no-progress")
    result = subprocess.run(command, env=env)
    if result.returncode != 0 or not is_complete(folder, config.config_hash()):
        raise RuntimeError(
            f"building the synthetic corpus in {folder} failed (exit code {result.returncode}); "
            "the child process's error is printed above"
        )
    marker = json.loads((folder / COMPLETE_MARKER).read_text())
    log.info(
        "built synthetic corpus %s: %d utterances in %.1f s (%.1f utterances/s)",
        folder, marker["n_utterances"], marker["seconds"], marker["utterances_per_second"],
    )  # fmt: skip


def _utterance_plan(config: SyntheticCorpusConfig) -> list[dict]:
    """Every utterance's split, id, text, voice, rate and pitch, in build order."""
    sizes = config.split_sizes()
    sentences = unique_sentences(sum(sizes.values()), np.random.default_rng([config.seed, 0]))
    params_rng = np.random.default_rng([config.seed, 1])
    seen_voices, heldout_voices = voices(TRAIN_VARIANTS), voices(HELDOUT_VARIANTS)
    plan = []
    for split, size in sizes.items():
        split_voices = heldout_voices if split == "test_heldout_voices" else seen_voices
        for index in range(size):
            plan.append({
                "split": split,
                "id": f"{split}-{index:06d}",
                "text": sentences[len(plan)],
                "voice": _choice(params_rng, split_voices),
                "rate": int(params_rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
                "pitch": int(params_rng.integers(PITCH[0], PITCH[1] + 1)),
            })  # fmt: skip
    return plan


def add_white_noise(waveform: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Adds Gaussian white noise `snr_db` dB below the waveform's mean power."""
    noise_rms = np.sqrt(np.mean(np.square(waveform, dtype=np.float64))) / 10 ** (snr_db / 20)
    return (waveform + rng.normal(0.0, noise_rms, waveform.shape)).astype(np.float32)


def _write_corpus(folder: Path, config: SyntheticCorpusConfig, progress: bool) -> None:
    """Synthesises every utterance into `folder`; must run in a fresh process (see module doc)."""
    torch.set_num_threads(1)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    engine = ESpeak(rand_seed=config.seed)
    resampler = torchaudio.transforms.Resample(engine.sample_rate, SAMPLE_RATE)
    plan = _utterance_plan(config)
    manifests: dict[str, list[str]] = {split: [] for split in SPLITS}
    start = time.perf_counter()
    for utt_index, utt in enumerate(tqdm(plan, desc="synthesising", disable=not progress)):
        samples = engine.synthesize(utt["text"], utt["voice"], utt["rate"], utt["pitch"])
        waveform = resampler(torch.from_numpy(samples.astype(np.float32) / 32768.0)).numpy()
        if config.noise_snr_db is not None:
            noise_rng = np.random.default_rng([config.seed, 2, utt_index])
            waveform = add_white_noise(waveform, config.noise_snr_db, noise_rng)
        peak = np.abs(waveform).max(initial=0.0)
        if peak > MAX_PEAK:  # scale down rather than clip
            waveform = waveform * (MAX_PEAK / peak)
        pcm = np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)
        relative_path = f"wavs/{utt['split']}/{utt['id']}.wav"
        with atomic_path(folder / relative_path) as tmp_path:
            soundfile.write(tmp_path, pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        entry = {
            "audio_filepath": relative_path,
            "duration": len(pcm) / SAMPLE_RATE,
            "text": utt["text"],
            "id": utt["id"],
            "voice": utt["voice"],
            "rate": utt["rate"],
            "pitch": utt["pitch"],
        }
        manifests[utt["split"]].append(json.dumps(entry))
    seconds = time.perf_counter() - start
    for split, path in manifest_paths(folder).items():
        atomic_write_text(path, "".join(line + "\n" for line in manifests[split]))
    marker = {
        "config_hash": config.config_hash(),
        "config": dataclasses.asdict(config),
        "n_utterances": len(plan),
        "seconds": round(seconds, 3),
        "utterances_per_second": round(len(plan) / max(seconds, 1e-9), 2),
    }
    atomic_write_text(folder / COMPLETE_MARKER, json.dumps(marker, indent=1))  # written last


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the synthetic eSpeak NG corpus.")
    parser.add_argument("--cache-dir", default=None, help="default: " + str(default_cache_dir()))
    for split, default in SyntheticCorpusConfig().split_sizes().items():
        parser.add_argument(f"--n-{split.replace('_', '-')}", type=int, default=default)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-snr-db", type=float, default=None)
    parser.add_argument("--no-progress", action="store_true")
    # Internal: the parent process runs the actual synthesis through these two.
    parser.add_argument("--write-into", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_into is not None:
        config = SyntheticCorpusConfig(**json.loads(args.config))
        _write_corpus(Path(args.write_into), config, progress=not args.no_progress)
        return
    logging.basicConfig(level=logging.INFO)
    manifests = build_synthetic_corpus(
        args.cache_dir, args.n_train, args.n_dev, args.n_test, args.n_test_heldout_voices,
        args.seed, args.noise_snr_db, progress=not args.no_progress,
    )  # fmt: skip
    for split, path in manifests.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
