import numpy as np
import pytest
import soundfile
import torch

from asrquant.data.audio import AudioError, BadDataError, audio_info, read_audio


def test_reads_16k_wav_as_1d_float32(tmp_path, tone):
    samples = tone(tmp_path / "a.wav", seconds=0.5, sample_rate=16000)
    waveform = read_audio(tmp_path / "a.wav")
    assert waveform.dtype == torch.float32 and waveform.ndim == 1
    assert len(waveform) == 8000
    assert np.allclose(waveform.numpy(), samples, atol=1e-4)


def test_8k_flac_is_resampled_to_16k(tmp_path, tone):
    tone(tmp_path / "a.flac", seconds=0.75, sample_rate=8000)
    assert len(read_audio(tmp_path / "a.flac", target_sr=16000)) == 12000


def test_stereo_is_averaged_to_mono(tmp_path):
    left_right = np.stack([np.full(1600, 0.2), np.full(1600, 0.4)], axis=1).astype(np.float32)
    soundfile.write(tmp_path / "stereo.wav", left_right, 16000, subtype="FLOAT")
    waveform = read_audio(tmp_path / "stereo.wav")
    assert waveform.shape == (1600,)
    assert torch.allclose(waveform, torch.full((1600,), 0.3))


def test_other_rate_is_rejected_when_resampling_is_off(tmp_path, tone):
    tone(tmp_path / "a.wav", sample_rate=8000)
    with pytest.raises(AudioError, match="8000 Hz"):
        read_audio(tmp_path / "a.wav", resample=False)


def write_nan_wav(path):
    soundfile.write(path, np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, subtype="FLOAT")


def write_zero_frame_wav(path):
    soundfile.write(path, np.zeros(0, np.float32), 16000)


BAD_FILES = {
    "missing file": (lambda path: None, "missing file"),
    "empty file": (lambda path: path.write_bytes(b""), "empty file"),
    "zero frames": (write_zero_frame_wav, "no audio samples"),
    "not audio": (lambda path: path.write_bytes(b"this is not a wav file\n" * 20), "unreadable"),
    "nan samples": (write_nan_wav, "NaN"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_raises_audio_error_naming_the_file(tmp_path, case):
    write, reason = BAD_FILES[case]
    path = tmp_path / "bad.wav"
    write(path)
    with pytest.raises(AudioError, match=reason) as error:
        read_audio(path)
    assert str(path) in str(error.value)
    assert isinstance(error.value, BadDataError) and isinstance(error.value, ValueError)


def test_info_reads_duration_from_header(tmp_path, tone):
    tone(tmp_path / "a.flac", seconds=1.25, sample_rate=8000, channels=2)
    info = audio_info(tmp_path / "a.flac")
    assert (info.sample_rate, info.num_channels) == (8000, 2)
    assert info.duration == pytest.approx(1.25)
