"""recipes/an4/prepare.py on tiny copies of CMU's AN4 distribution, made from five real
utterances of ../shared/data/an4 written back the way CMU ships them: headerless big-endian
raw PCM (an4_raw.bigendian.tar.gz) or NIST SPHERE (an4_sphere.tar.gz), with CMU's
etc/an4_{train,test}.{transcription,fileids}; as a folder or as the .tar.gz itself.

Preparing such a copy must give back ../shared/data/an4 exactly: the same samples and the
same manifest lines (ids, text, speaker, duration). The utterances include the AN4 file whose
byte positions differ least in entropy (cen5-msrb-b, loud) and the one whose lag-1
autocorrelation tells the byte orders apart least (cen4-mkem-b, quiet).
"""

import importlib.util
import json
import os
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "an4"
IDS = {"train": ["an251-fash-b", "cen5-msrb-b", "cen4-mkem-b"],
       "test": ["an406-fcaw-b", "an402-mdms2-b"]}
FOLDERS = {"train": "an4_clstk", "test": "an4test_clstk"}


def _module(name):
    spec = importlib.util.spec_from_file_location(f"an4_{name}", RECIPE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


prepare = _module("prepare")


@pytest.fixture
def an4(shared_dir):
    """{split: [(manifest line, row, int16 samples)]} of the chosen shared AN4 utterances."""
    folder = Path(shared_dir) / "data" / "an4"
    chosen = {}
    for split, ids in IDS.items():
        lines = {Path(json.loads(x)["audio_filepath"]).stem: x
                 for x in (folder / f"{split}.jsonl").read_text().splitlines()}
        chosen[split] = []
        for utt_id in ids:
            row = json.loads(lines[utt_id])
            samples, rate = soundfile.read(folder / row["audio_filepath"], dtype="int16")
            assert rate == 16000 and samples.ndim == 1
            chosen[split].append((lines[utt_id], row, samples))
    return chosen


def write_cmu(root: Path, an4: dict, kind: str = "raw", order: str = "big") -> Path:
    """CMU's tree under root/an4: audio as `kind` (raw | sph) in byte `order`, etc/ lists."""
    top = root / "an4"
    for split, utts in an4.items():
        transcription, fileids = [], []
        for _, row, samples in utts:
            utt_id, speaker = Path(row["audio_filepath"]).stem, row["speaker"]
            path = top / "wav" / FOLDERS[split] / speaker / f"{utt_id}.{kind}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "raw":
                path.write_bytes(samples.astype(">i2" if order == "big" else "<i2").tobytes())
            else:  # libsndfile's NIST writer: a 1024-byte header with sample_byte_format
                soundfile.write(path, samples, 16000, format="NIST", subtype="PCM_16",
                                endian=order.upper())
            transcription.append(f"<s> {row['text'].upper()} </s> ({utt_id})\n")
            fileids.append(f"{FOLDERS[split]}/{speaker}/{utt_id}\n")
        (top / "etc").mkdir(parents=True, exist_ok=True)
        (top / "etc" / f"an4_{split}.transcription").write_text("".join(transcription))
        (top / "etc" / f"an4_{split}.fileids").write_text("".join(fileids))
    (top / "README").write_text("The files are in raw PCM format, sampled at 16kHz, in "
                                "little endian byte order.\n")
    return top


def tar_gz(top: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(top, arcname="an4")
    return path


def assert_same_as_shared(out: Path, an4: dict) -> None:
    for split, utts in an4.items():
        assert (out / f"{split}.jsonl").read_text() == "".join(line + "\n" for line, *_ in utts)
        for _, row, samples in utts:
            got, rate = soundfile.read(out / row["audio_filepath"], dtype="int16")
            assert rate == 16000 and soundfile.info(out / row["audio_filepath"]).format == "FLAC"
            np.testing.assert_array_equal(got, samples, err_msg=row["audio_filepath"])


def test_the_fabricated_raw_files_are_big_endian(an4, tmp_path):
    top = write_cmu(tmp_path, an4)
    samples = an4["train"][0][2]
    data = (top / "wav/an4_clstk/fash/an251-fash-b.raw").read_bytes()
    assert len(data) == 2 * len(samples)
    decoded = struct.unpack(f">{len(samples)}h", data)
    assert list(decoded) == samples.tolist()
    assert list(struct.unpack(f"<{len(samples)}h", data)) != samples.tolist()


@pytest.mark.parametrize("kind, order, packed", [
    ("raw", "big", "folder"), ("raw", "big", "tar.gz"), ("sph", "big", "folder"),
    ("sph", "little", "tar.gz")])
def test_prepare_gives_back_the_shared_an4_exactly(an4, tmp_path, kind, order, packed):
    top = write_cmu(tmp_path / "cmu", an4, kind, order)
    root = tar_gz(top, tmp_path / "an4.tar.gz") if packed == "tar.gz" else top.parent
    summary = prepare.prepare(root, tmp_path / "out", progress=False)
    assert_same_as_shared(tmp_path / "out", an4)
    train = summary["splits"]["train"]
    assert train["byte_order"] == {order: 3} and train["byte_order_assumed"] == 0
    assert train["audio_files"] == [f".{kind}"] and train["sphere_header_overruled"] == 0
    assert (train["speakers"], summary["splits"]["test"]["speakers"]) == (3, 2)
    assert (tmp_path / "out" / "README.cmu").read_text().startswith("The files are in raw")


@pytest.mark.parametrize("order, wrong", [("little", "big"), ("big", "little")])
def test_a_byte_order_that_the_bytes_contradict_stops_naming_the_file(an4, tmp_path, order,
                                                                      wrong):
    top = write_cmu(tmp_path, an4, "raw", order)
    with pytest.raises(prepare.ByteOrderError,
                       match=rf"an4_clstk/fash/an251-fash-b\.raw: its samples are "
                             rf"{order}-endian, not {wrong}-endian.*--byte-order {order}"):
        prepare.prepare(top, tmp_path / "out", byte_order=wrong, progress=False)


def test_auto_reads_a_little_endian_copy_right_and_says_so(an4, tmp_path, capsys):
    top = write_cmu(tmp_path, an4, "raw", "little")
    prepare.main(["--root", str(top), "--out", str(tmp_path / "out"), "--no-progress"])
    assert_same_as_shared(tmp_path / "out", an4)
    err = capsys.readouterr().err
    assert "train: 3 utterances" in err and "3 written (3 little-endian)" in err
    assert "2 written (2 little-endian)" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["splits"]["test"]["byte_order"] == {"little": 2}


def test_a_sphere_header_stating_the_wrong_byte_order_is_overruled_by_the_samples(an4,
                                                                                  tmp_path):
    top = write_cmu(tmp_path, an4, "sph", "big")
    for path in top.rglob("*.sph"):
        data = path.read_bytes()
        assert data.count(b"sample_byte_format -s2 10") == 1
        path.write_bytes(data.replace(b"sample_byte_format -s2 10", b"sample_byte_format -s2 01"))
    summary = prepare.prepare(top, tmp_path / "out", progress=False)
    assert_same_as_shared(tmp_path / "out", an4)
    assert summary["splits"]["train"]["sphere_header_overruled"] == 3
    assert summary["splits"]["train"]["byte_order"] == {"big": 3}


def test_bytes_that_do_not_tell_their_order_are_read_as_stated():
    silence = np.zeros(1600, np.int16).tobytes()
    assert prepare.detect_byte_order(silence) is None
    decoded = prepare.decode(silence, "x.raw", "little")
    assert decoded.how == "assumed" and decoded.order == "little"
    assert prepare.decode(silence, "x.raw").order == "big"  # CMU's raw order


def test_a_second_run_keeps_complete_outputs_and_redoes_missing_or_broken_ones(an4, tmp_path):
    top = write_cmu(tmp_path, an4)
    out = tmp_path / "out"
    prepare.prepare(top, out, progress=False)
    flacs = sorted(out.rglob("*.flac"))
    assert len(flacs) == 5
    before = {p: p.stat().st_mtime_ns for p in flacs}
    flacs[0].unlink()
    flacs[1].write_bytes(b"half a flac")
    summary = prepare.prepare(top, out, progress=False)
    done = {s: (v["written"], v["already_there"]) for s, v in summary["splits"].items()}
    assert sum(w for w, _ in done.values()) == 2 and sum(k for _, k in done.values()) == 3
    assert all(p.stat().st_mtime_ns == before[p] for p in flacs[2:])
    assert_same_as_shared(out, an4)
    assert not list(out.rglob("*.tmp"))


def test_missing_or_inconsistent_cmu_files_stop_naming_what_was_expected(an4, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist \(--root\)"):
        prepare.prepare(tmp_path / "nowhere", tmp_path / "out1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no AN4 in .*empty: expected .*etc/"):
        prepare.prepare(tmp_path / "empty", tmp_path / "out2")

    top = write_cmu(tmp_path / "cmu", an4)
    (top / "etc" / "an4_test.fileids").unlink()
    with pytest.raises(FileNotFoundError, match=r"etc/an4_test\.fileids is missing"):
        prepare.prepare(top, tmp_path / "out3", progress=False)
    assert not (tmp_path / "out3").exists()  # every list is read before any audio

    top = write_cmu(tmp_path / "cmu2", an4)
    (top / "wav/an4_clstk/msrb/cen5-msrb-b.raw").unlink()
    with pytest.raises(FileNotFoundError, match=r"an4_clstk/msrb/cen5-msrb-b\.raw \(or \.sph\)"):
        prepare.prepare(top, tmp_path / "out4", progress=False)

    top = write_cmu(tmp_path / "cmu3", an4)
    with open(top / "etc" / "an4_train.transcription", "a") as f:
        f.write("<s> NO </s> (an999-fash-b)\n")
    with pytest.raises(ValueError, match=r"same utterances; 1 .*an999-fash-b"):
        prepare.prepare(top, tmp_path / "out5", progress=False)

    top = write_cmu(tmp_path / "cmu4", an4)
    with open(top / "wav/an4_clstk/fash/an251-fash-b.raw", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"an251-fash-b\.raw: \d+ bytes of samples; .* even"):
        prepare.prepare(top, tmp_path / "out6", progress=False)


def test_transcription_lines_are_read_as_cmu_writes_them():
    text = "<s> RUBOUT G M E F THREE NINE </s> (an406-fcaw-b)\nYES (an251-fash-b)\n\n"
    assert prepare.read_transcription(text, "t") == {
        "an406-fcaw-b": "rubout g m e f three nine", "an251-fash-b": "yes"}
    with pytest.raises(ValueError, match=r"t line 1: 'YES an251-fash-b' is not"):
        prepare.read_transcription("YES an251-fash-b\n", "t")
    with pytest.raises(ValueError, match=r"t line 1: utterance an1-x-b has no words"):
        prepare.read_transcription("<s> </s> (an1-x-b)\n", "t")


def _bash(script, env, timeout=120):
    return subprocess.run(["bash", str(script)], env={**os.environ, **env}, text=True,
                          capture_output=True, timeout=timeout)


def test_run_sh_prepares_from_cmus_archive_and_asks_for_data(an4, tmp_path):
    archive = tar_gz(write_cmu(tmp_path / "cmu", an4), tmp_path / "an4_raw.bigendian.tar.gz")
    proc = _bash(RECIPE / "run.sh", {"AN4_CMU": str(archive), "OUT": str(tmp_path / "run"),
                                     "LAST": "0"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "== 0. data preparation" in proc.stdout and "== 1." not in proc.stdout
    assert_same_as_shared(tmp_path / "run" / "data", an4)

    env = {"AN4_CMU": "", "DATA_DIR": "", "OUT": str(tmp_path / "run2")}
    proc = _bash(RECIPE / "run.sh", env)
    assert proc.returncode == 2 and "set AN4_CMU=" in proc.stdout and "DATA_DIR=" in proc.stdout


def test_study_sh_knows_the_an4_corpus_and_needs_its_data_dir(tmp_path):
    proc = _bash(ROOT / "recipes" / "study.sh", {"CORPUS": "an4", "DATA_DIR": "",
                                                 "OUT": str(tmp_path / "s")})
    assert proc.returncode == 2 and "CORPUS=an4 needs DATA_DIR" in proc.stdout
    proc = _bash(ROOT / "recipes" / "study.sh", {"CORPUS": "nope", "OUT": str(tmp_path / "s")})
    assert proc.returncode == 2 and "allowed: synthetic, fsdd, an4" in proc.stdout
