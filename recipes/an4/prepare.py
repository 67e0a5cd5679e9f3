"""AN4 data preparation: CMU's own distribution -> 16 kHz FLAC and JSONL manifests, in the
format of ../shared/data/an4 (what conf/data/an4.yaml reads). Nothing is downloaded.

    python recipes/an4/prepare.py --root an4_raw.bigendian.tar.gz --out data/an4
    python recipes/an4/prepare.py --root /data/an4 --out data/an4      # extracted, raw or .sph

ROOT is one of CMU's two archives, or either extracted (the folder `an4/` or the one holding
it):
  an4_raw.bigendian.tar.gz   an4/wav/{an4_clstk,an4test_clstk}/<speaker>/<id>.raw: headerless
                             16-bit 16 kHz mono PCM, big-endian (its README says little
                             endian: it is wrong)
  an4_sphere.tar.gz          the same tree with <id>.sph: NIST SPHERE, a 1024-byte header
and in both an4/etc/an4_{train,test}.transcription (lines "<s> YES </s> (an251-fash-b)") and
an4/etc/an4_{train,test}.fileids (lines "an4_clstk/fash/an251-fash-b").

OUT gets wav/{train,test}/<id>.flac (16 kHz mono 16-bit), train.jsonl and test.jsonl (lines
{"audio_filepath" (relative to OUT), "duration", "text" (normalize_text of CMU's
transcript: lower case), "speaker" (the speaker folder)}, in the order of the fileids),
README.cmu (CMU's README, when there is one) and summary.json.

The byte-order trap: every file's byte order is read from its bytes. Speech is mostly quiet,
so the high byte of a 16-bit sample takes few values and the low byte nearly any: the byte
position with the lower entropy is the high one (on the 1078 AN4 utterances the high bytes
carry at most 4.7 bits, the low ones at least 5.4). --byte-order auto (the default) reads
each file in the order its bytes show and says which it used; --byte-order big|little reads
every file in that order and stops at the first file whose bytes show the other one (for
.sph files it overrules the header's sample_byte_format, which auto checks like any claim).
Resumable: a FLAC already in OUT that opens as 16 kHz mono is kept; every file is written
atomically (asrquant.io), the manifests last.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from asrquant.data.audio import SAMPLE_RATE
from asrquant.data.text import normalize_text
from asrquant.io import atomic_write, atomic_write_json, atomic_write_text, check_writable

SPLITS = {"train": "an4_clstk", "test": "an4test_clstk"}  # our split: CMU's audio folder
BYTE_ORDERS = ("auto", "big", "little")
AUDIO_KINDS = (".raw", ".sph")
# Below this gap (bits) between the entropies of the two byte positions a file's bytes do not
# show its order (silence, a few samples); AN4's smallest gap is 2.3 bits.
MIN_ENTROPY_GAP = 1.0
SPHERE_ORDERS = {"10": "big", "01": "little"}  # sample_byte_format
# "<s> RUBOUT G M E F THREE NINE </s> (an406-fcaw-b)"; the sentence marks are optional.
TRANSCRIPT_LINE = re.compile(r"^(?:<s>)?(?P<words>.*?)(?:</s>)?\s*\((?P<id>[^()\s]+)\)$")


class ByteOrderError(ValueError):
    """A file's bytes show the other byte order than the one it was to be read in."""


@dataclass(frozen=True)
class Utterance:
    id: str        # CMU's: an251-fash-b
    speaker: str   # its folder: fash
    text: str      # normalised
    audio: str     # the file inside the AN4 root: wav/an4_clstk/fash/an251-fash-b.raw


# ---------------------------------------------------------------- where CMU's files are

class FolderSource:
    """CMU's tree on disk: `root` is an4/ itself or the folder holding it."""

    def __init__(self, root: Path):
        for candidate in (root, root / "an4"):
            if (candidate / "etc").is_dir():
                self.root = candidate
                break
        else:
            raise FileNotFoundError(
                f"no AN4 in {root}: expected {root}/etc/ or {root}/an4/etc/ holding "
                "an4_{train,test}.{transcription,fileids} (CMU's an4_raw.bigendian.tar.gz or "
                "an4_sphere.tar.gz, extracted)")
        self.name = str(self.root)

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def text(self, rel: str) -> str | None:
        path = self.root / rel
        return path.read_text(encoding="latin-1") if path.is_file() else None

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def read(self, rels: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        for rel in rels:
            yield rel, (self.root / rel).read_bytes()


class TarSource:
    """CMU's archive itself, read as a stream (a .tar.gz has no random access): one pass
    for the etc/ files and the list of members, one for the audio."""

    ETC = re.compile(r"^(?P<prefix>(?:.*/)?)etc/an4_(?:train|test)\.(?:transcription|fileids)$")

    def __init__(self, path: Path):
        self.path, self.name = path, str(path)
        texts, names = {}, set()
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                names.add(member.name)
                if self.ETC.match(member.name) or Path(member.name).name == "README":
                    texts[member.name] = tar.extractfile(member).read().decode("latin-1")
        prefixes = sorted(m["prefix"] for m in map(self.ETC.match, texts) if m)
        if not prefixes:
            raise FileNotFoundError(
                f"no AN4 in {path}: expected members an4/etc/an4_{{train,test}}."
                "{transcription,fileids} (CMU's an4_raw.bigendian.tar.gz or an4_sphere.tar.gz)")
        self.prefix = prefixes[0]
        self.texts = {k[len(self.prefix):]: v for k, v in texts.items()
                      if k.startswith(self.prefix)}
        self.names = {n[len(self.prefix):] for n in names if n.startswith(self.prefix)}

    def where(self, rel: str) -> str:
        return f"{self.path}:{self.prefix}{rel}"

    def text(self, rel: str) -> str | None:
        return self.texts.get(rel)

    def exists(self, rel: str) -> bool:
        return rel in self.names

    def read(self, rels: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """The members `rels`, in the archive's order."""
        wanted = {self.prefix + rel for rel in rels}
        if not wanted:
            return
        with tarfile.open(self.path, "r:*") as tar:
            for member in tar:
                if member.name in wanted:
                    yield member.name[len(self.prefix):], tar.extractfile(member).read()


def open_source(root: str | os.PathLike) -> FolderSource | TarSource:
    root = Path(root)
    if root.is_dir():
        return FolderSource(root)
    if root.is_file() and tarfile.is_tarfile(root):
        return TarSource(root)
    if root.is_file():
        raise ValueError(f"{root} is neither a folder nor a tar archive; allowed: CMU's "
                         "an4_raw.bigendian.tar.gz or an4_sphere.tar.gz, or either extracted")
    raise FileNotFoundError(f"AN4 folder or archive {root} does not exist (--root)")


# ---------------------------------------------------------------- CMU's lists

def required_text(source, rel: str) -> str:
    text = source.text(rel)
    if text is None:
        raise FileNotFoundError(f"{source.where(rel)} is missing: CMU's AN4 has "
                                "etc/an4_{train,test}.{transcription,fileids}")
    return text


def read_transcription(text: str, where: str) -> dict[str, str]:
    """{utterance id: normalised words} from lines "<s> WORDS </s> (id)"."""
    words = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = TRANSCRIPT_LINE.match(line.strip())
        if not match:
            raise ValueError(f"{where} line {number}: {line.strip()!r} is not "
                             "'<s> WORDS </s> (utterance-id)'")
        utt_id, normalised = match["id"], normalize_text(match["words"])
        if not normalised:
            raise ValueError(f"{where} line {number}: utterance {utt_id} has no words")
        if utt_id in words:
            raise ValueError(f"{where} line {number}: utterance {utt_id} is listed twice")
        words[utt_id] = normalised
    return words


def read_fileids(text: str, where: str, folder: str) -> list[tuple[str, str]]:
    """[(speaker, utterance id)] from lines "<folder>/<speaker>/<id>", in their order."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split("/")
        if len(parts) != 3 or parts[0] != folder:
            raise ValueError(f"{where} line {number}: {line.strip()!r} is not "
                             f"'{folder}/<speaker>/<utterance-id>'")
        entries.append((parts[1], parts[2]))
    return entries


def read_split(source, split: str) -> list[Utterance]:
    """The utterances of `split` in the fileids' order, each with its transcript and the
    audio file that exists (.raw or .sph)."""
    folder, lists = SPLITS[split], f"etc/an4_{split}"
    words = read_transcription(required_text(source, f"{lists}.transcription"),
                               source.where(f"{lists}.transcription"))
    entries = read_fileids(required_text(source, f"{lists}.fileids"),
                           source.where(f"{lists}.fileids"), folder)
    listed = {utt_id for _, utt_id in entries}
    unmatched = sorted(listed ^ words.keys())
    if unmatched:
        raise ValueError(
            f"{source.where(lists)}.fileids and {lists}.transcription must list the same "
            f"utterances; {len(unmatched)} are in only one of them, e.g. {unmatched[:3]}")
    utts = []
    for speaker, utt_id in entries:
        stem = f"wav/{folder}/{speaker}/{utt_id}"
        audio = next((stem + ext for ext in AUDIO_KINDS if source.exists(stem + ext)), None)
        if audio is None:
            raise FileNotFoundError(f"{source.where(stem)}.raw (or .sph) is missing: "
                                    f"{lists}.fileids lists it")
        utts.append(Utterance(utt_id, speaker, words[utt_id], audio))
    return utts


# ---------------------------------------------------------------- samples

def _entropy(values: np.ndarray) -> float:
    p = np.bincount(values, minlength=256) / values.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def byte_entropies(payload: bytes) -> tuple[float, float]:
    """Entropy (bits) of the first and of the second byte of each 16-bit sample."""
    b = np.frombuffer(payload, np.uint8)
    return _entropy(b[0::2]), _entropy(b[1::2])


def detect_byte_order(payload: bytes) -> str | None:
    """'big' when the first byte of each sample is its high byte (the one with the lower
    entropy), 'little' when the second is; None when the bytes do not tell."""
    first, second = byte_entropies(payload)
    if abs(first - second) < MIN_ENTROPY_GAP:
        return None
    return "big" if first < second else "little"


def sphere_header(data: bytes, where: str) -> tuple[int, dict[str, str]]:
    """(header size, {field: value}) of a NIST SPHERE file ("NIST_1A", the size, then
    "name -type value" lines up to "end_head")."""
    lines = data[:4096].split(b"\n")
    if lines[0].strip() != b"NIST_1A" or len(lines) < 2 or not lines[1].strip().isdigit():
        raise ValueError(f"{where}: not a NIST SPHERE file (no 'NIST_1A' and header size)")
    size, fields = int(lines[1]), {}
    for line in data[:size].decode("latin-1").splitlines()[2:]:
        if line.strip() == "end_head":
            return size, fields
        parts = line.split(None, 2)
        if len(parts) == 3:
            fields[parts[0]] = parts[2].strip()
    raise ValueError(f"{where}: the SPHERE header has no end_head within its {size} bytes")


def sphere_payload(data: bytes, where: str) -> tuple[bytes, str | None]:
    """The sample bytes of a 16 kHz mono 16-bit PCM SPHERE file, and the byte order its
    header states (None if it states none)."""
    size, fields = sphere_header(data, where)
    expected = {"sample_n_bytes": "2", "channel_count": "1", "sample_rate": str(SAMPLE_RATE)}
    for name, value in expected.items():
        if fields.get(name, value) != value:
            raise ValueError(f"{where}: SPHERE {name} is {fields[name]}; allowed: {value} "
                             "(AN4 is 16-bit 16 kHz mono)")
    coding = fields.get("sample_coding", "pcm")
    if coding != "pcm":
        raise ValueError(f"{where}: SPHERE sample_coding is {coding!r}; allowed: 'pcm' "
                         "(decompress first, e.g. sph2pipe -f sph)")
    payload = data[size:]
    if "sample_count" in fields:
        count = int(fields["sample_count"])
        if len(payload) < 2 * count:
            raise ValueError(f"{where}: the header says {count} samples, the file holds "
                             f"{len(payload) // 2}: it is cut short")
        payload = payload[:2 * count]
    return payload, SPHERE_ORDERS.get(fields.get("sample_byte_format", ""))


@dataclass(frozen=True)
class Decoded:
    samples: np.ndarray  # int16
    order: str           # the byte order used: big | little
    how: str             # detected | assumed (the bytes did not tell)
    overruled: bool      # a SPHERE header stated the other order


def decode(data: bytes, where: str, byte_order: str = "auto") -> Decoded:
    """The samples of one AN4 file (.raw or .sph, by `where`'s suffix) in the byte order its
    bytes show; with byte_order big|little, a file whose bytes show the other order stops."""
    if byte_order not in BYTE_ORDERS:
        raise ValueError(f"byte order {byte_order!r} is invalid; allowed: {BYTE_ORDERS}")
    stated = None
    if where.endswith(".sph"):
        data, stated = sphere_payload(data, where)
    if not data or len(data) % 2:
        raise ValueError(f"{where}: {len(data)} bytes of samples; a 16-bit file needs an even, "
                         "non-zero number")
    detected = detect_byte_order(data)
    if byte_order != "auto" and detected not in (None, byte_order):
        first, second = byte_entropies(data)
        raise ByteOrderError(
            f"{where}: its samples are {detected}-endian, not {byte_order}-endian "
            f"(--byte-order {byte_order}): the {'first' if detected == 'big' else 'second'} "
            f"byte of each sample is the high one (entropies {first:.1f} and {second:.1f} "
            f"bits); use --byte-order {detected} or auto")
    claimed = stated if byte_order == "auto" else byte_order
    order = detected or claimed or "big"  # CMU's raw files are big-endian
    samples = np.frombuffer(data, ">i2" if order == "big" else "<i2").astype(np.int16)
    return Decoded(samples, order, "detected" if detected else "assumed",
                   stated is not None and stated != order)


# ---------------------------------------------------------------- outputs

def flac_frames(path: Path) -> int | None:
    """Frames of a complete output FLAC (16 kHz mono, readable), else None."""
    if not path.is_file():
        return None
    try:
        info = soundfile.info(str(path))
    except (OSError, RuntimeError):  # not audio, or cut short
        return None
    ok = info.format == "FLAC" and info.samplerate == SAMPLE_RATE and info.channels == 1
    return info.frames if ok and info.frames > 0 else None


def prepare_split(source, split: str, utts: list[Utterance], out: Path, byte_order: str,
                  progress: bool) -> dict:
    flac = {u.id: out / "wav" / split / f"{u.id}.flac" for u in utts}
    frames = {u.id: flac_frames(flac[u.id]) for u in utts}
    todo = {u.audio: u for u in utts if frames[u.id] is None}
    orders, assumed, overruled = collections.Counter(), 0, 0
    bar = tqdm(total=len(utts), initial=len(utts) - len(todo), desc=f"AN4 {split}",
               unit="utt", disable=not progress)
    for rel, data in source.read(list(todo)):
        u = todo[rel]
        decoded = decode(data, source.where(rel), byte_order)
        orders[decoded.order] += 1
        assumed += decoded.how == "assumed"
        overruled += decoded.overruled
        atomic_write(flac[u.id], lambda tmp, s=decoded.samples: soundfile.write(
            tmp, s, SAMPLE_RATE, format="FLAC", subtype="PCM_16"))
        frames[u.id] = len(decoded.samples)
        bar.update()
    bar.close()
    missing = [u.audio for u in utts if frames[u.id] is None]
    if missing:  # listed by the archive's index, yet not read back from it
        raise FileNotFoundError(f"{source.where(missing[0])} could not be read "
                                f"({len(missing)} file(s) of {split})")

    lines = (json.dumps({"audio_filepath": f"wav/{split}/{u.id}.flac",
                         "duration": round(frames[u.id] / SAMPLE_RATE, 3),
                         "text": u.text, "speaker": u.speaker}) for u in utts)
    atomic_write_text(out / f"{split}.jsonl", "".join(line + "\n" for line in lines))
    return {"utterances": len(utts), "speakers": len({u.speaker for u in utts}),
            "minutes": round(sum(frames.values()) / SAMPLE_RATE / 60, 2),
            "words": sum(len(u.text.split()) for u in utts),
            "audio_files": sorted({Path(u.audio).suffix for u in utts}),
            "written": len(todo), "already_there": len(utts) - len(todo),
            "byte_order": dict(orders), "byte_order_assumed": assumed,
            "sphere_header_overruled": overruled}


def prepare(root: str | os.PathLike, out: str | os.PathLike, byte_order: str = "auto",
            progress: bool = True) -> dict:
    """CMU's AN4 (folder or archive) at `root` -> FLAC + manifests in `out`; the summary."""
    if byte_order not in BYTE_ORDERS:
        raise ValueError(f"--byte-order {byte_order!r} is invalid; allowed: {BYTE_ORDERS}")
    source = open_source(root)
    splits = {split: read_split(source, split) for split in SPLITS}  # every list read first
    out = check_writable(out)
    summary = {"root": source.name, "byte_order_option": byte_order,
               "splits": {split: prepare_split(source, split, utts, out, byte_order, progress)
                          for split, utts in splits.items()}}
    readme = source.text("README")
    if readme is not None:
        atomic_write_text(out / "README.cmu", readme)
    atomic_write_json(out / "summary.json", summary)
    return summary


def describe(split: str, s: dict) -> str:
    """One line of the summary of a split, with the byte order each file was read in."""
    orders = ", ".join(f"{n} {order}-endian" for order, n in sorted(s["byte_order"].items()))
    notes = []
    if s["byte_order_assumed"]:
        notes.append(f"{s['byte_order_assumed']} whose bytes did not tell")
    if s["sphere_header_overruled"]:
        notes.append(f"{s['sphere_header_overruled']} whose SPHERE header said the other order")
    how = f" ({'; '.join([orders, *notes])})" if s["written"] else ""
    return (f"   {split}: {s['utterances']} utterances, {s['speakers']} speakers, "
            f"{s['minutes']} min; {s['written']} written{how}, {s['already_there']} already "
            "there")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True,
                    help="CMU's an4_raw.bigendian.tar.gz or an4_sphere.tar.gz, or either "
                         "extracted (an4/ or the folder holding it)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--byte-order", default="auto", choices=BYTE_ORDERS,
                    help="auto: each file's order from its bytes; big|little: stop at a file "
                         "in the other order")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        summary = prepare(args.root, args.out, args.byte_order, not args.no_progress)
    except (OSError, ValueError) as e:
        sys.exit(f"prepare.py: {e}")
    for split, s in summary["splits"].items():
        print(describe(split, s), file=sys.stderr)
    print(f"   wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
