"""ConformerCTC: exact lengths, padding invariance, SpecAugment, feature normaliser, config."""

import math

import pytest
import torch

from asrquant.models import MIN_AUDIO_SAMPLES, ConformerCTC, ConformerCTCConfig
from asrquant.models.conformer_ctc import padding_mask

TINY = dict(
    vocab_size=6,
    d_model=16,
    num_layers=2,
    num_heads=2,
    ffn_dim=32,
    conv_kernel_size=7,
    subsampling_channels=4,
    dropout=0.0,
)


def tiny_model(**overrides) -> ConformerCTC:
    torch.manual_seed(0)
    return ConformerCTC(ConformerCTCConfig(**{**TINY, **overrides}))


def noise(num_samples: int, seed: int) -> torch.Tensor:
    return 0.1 * torch.randn(num_samples, generator=torch.Generator().manual_seed(seed))


def pad_batch(waveforms, total_samples=None):
    total_samples = total_samples or max(w.numel() for w in waveforms)
    audio = torch.zeros(len(waveforms), total_samples)
    for i, w in enumerate(waveforms):
        audio[i, : w.numel()] = w
    return audio, torch.tensor([w.numel() for w in waveforms])


def expected_output_frames(num_samples: int) -> int:
    frames = 1 + (num_samples - 400) // 160  # 25 ms windows every 10 ms, inside the audio
    for _ in range(2):  # Conv2d kernel 3, stride 2, no padding
        frames = math.floor((frames - 3) / 2) + 1
    return frames


@pytest.mark.parametrize("num_samples", [1360, 1361, 1519, 1520, 1680, 4000, 8321, 16000])
def test_output_length_matches_subsampling_arithmetic_and_tensor_size(num_samples):
    model = tiny_model().eval()
    with torch.no_grad():
        log_probs, out_lens = model(noise(num_samples, 0)[None], torch.tensor([num_samples]))
    expected = expected_output_frames(num_samples)
    assert out_lens.tolist() == [expected]
    assert log_probs.shape == (1, expected, TINY["vocab_size"])
    assert ConformerCTC.output_lengths(torch.tensor([num_samples])).tolist() == [expected]


def test_batch_output_is_as_long_as_longest_utterance_even_with_extra_padding():
    model = tiny_model().eval()
    lengths = [16000, 4000, 1360]
    audio, audio_lens = pad_batch([noise(n, i) for i, n in enumerate(lengths)], 20000)
    with torch.no_grad():
        log_probs, out_lens = model(audio, audio_lens)
    assert out_lens.tolist() == [expected_output_frames(n) for n in lengths]
    assert log_probs.shape[1] == max(out_lens.tolist())


def test_too_short_audio_is_refused_naming_the_minimum():
    model = tiny_model()
    with pytest.raises(ValueError, match=str(MIN_AUDIO_SAMPLES)):
        model(torch.zeros(1, 2000), torch.tensor([MIN_AUDIO_SAMPLES - 1]))


def test_utterance_alone_and_padded_in_a_batch_gives_same_log_probs():
    model = tiny_model()
    model.fit_normalizer(noise(8000, s) for s in range(3))
    # Non-trivial BatchNorm statistics, so that eval mode is not close to the identity.
    model.train()
    with torch.no_grad():
        model(*pad_batch([noise(9000, 7), noise(5000, 8)]))
    model.eval()

    waveforms = [noise(12000, 1), noise(3001, 2), noise(7777, 3)]
    with torch.no_grad():
        batch_log_probs, batch_lens = model(*pad_batch(waveforms, 13000))
        for i, waveform in enumerate(waveforms):
            alone, alone_lens = model(*pad_batch([waveform]))
            length = int(alone_lens[0])
            assert int(batch_lens[i]) == length
            torch.testing.assert_close(batch_log_probs[i, :length], alone[0], atol=1e-5, rtol=0)


def test_encoder_equals_torchaudio_conformer_when_there_is_no_padding():
    model = tiny_model().eval()
    feats = torch.randn(2, 60, 80, generator=torch.Generator().manual_seed(0))
    feat_lens = torch.tensor([60, 60])
    with torch.no_grad():
        encoded, lens = model.encode_features(feats, feat_lens)
        subsampled, sub_lens = model.subsampling(feats, feat_lens)
        reference, _ = model.encoder(subsampled, sub_lens)
    torch.testing.assert_close(encoded, reference, atol=1e-6, rtol=1e-6)


def test_spec_augment_masks_features_in_training_only():
    model = tiny_model(freq_masks=2, freq_mask_width=20, time_masks=2, time_mask_width=20)
    audio, audio_lens = pad_batch([noise(16000, 0), noise(9000, 1)])

    model.eval()
    eval_feats, _ = model.compute_features(audio, audio_lens)
    assert torch.equal(eval_feats, model.compute_features(audio, audio_lens)[0])

    model.train()
    torch.manual_seed(1)
    first, _ = model.compute_features(audio, audio_lens)
    second, _ = model.compute_features(audio, audio_lens)
    assert not torch.equal(first, second)
    assert not torch.equal(first, eval_feats)
    # Masking only ever zeroes values; everything kept equals the unmasked features.
    kept = first != 0
    assert torch.equal(first[kept], eval_feats[kept])


def test_spec_augment_masks_only_valid_frames_of_each_utterance():
    model = tiny_model(freq_masks=1, freq_mask_width=10, time_masks=2, time_mask_width=30)
    feat_lens = torch.tensor([200, 50])
    torch.manual_seed(0)
    masked_draws = 0
    for _ in range(30):
        masked = model.spec_augment(torch.ones(2, 80, 200), feat_lens)
        assert torch.equal(masked[1, :, 50:], torch.ones(80, 150))  # padding untouched
        masked_draws += bool((masked[1, :, :50] == 0).any())
    assert masked_draws >= 20


def test_fitted_normalizer_gives_zero_mean_unit_variance_features_on_fitting_data():
    t = torch.arange(24000) / 16000
    waveforms = [
        0.5 * torch.sin(2 * math.pi * 440 * t[:16000]) + noise(16000, 0),
        0.2 * torch.sin(2 * math.pi * 1000 * t) + noise(24000, 1),
        noise(5000, 2),
    ]
    model = tiny_model()
    model.fit_normalizer(iter(waveforms))  # any iterable, consumed once
    model.eval()
    frames = []
    for w in waveforms:
        feats, _ = model.compute_features(w[None], torch.tensor([w.numel()]))
        frames.append(feats[0])
    frames = torch.cat(frames).double()
    torch.testing.assert_close(
        frames.mean(dim=0), torch.zeros(80, dtype=torch.float64), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        frames.std(dim=0, unbiased=False), torch.ones(80, dtype=torch.float64), atol=1e-3, rtol=0
    )


def test_normalizer_buffers_are_saved_in_state_dict():
    model = tiny_model()
    model.fit_normalizer([noise(4000, 0)])
    state = model.state_dict()
    assert torch.equal(state["feat_mean"], model.feat_mean)
    assert torch.equal(state["feat_std"], model.feat_std)
    restored = tiny_model()
    restored.load_state_dict(state)
    assert torch.equal(restored.feat_mean, model.feat_mean)


def test_padding_mask_marks_frames_beyond_each_length():
    assert padding_mask(torch.tensor([2, 0, 3]), 3).tolist() == [
        [False, False, True],
        [True, True, True],
        [False, False, False],
    ]


def test_config_round_trips_through_a_plain_dict():
    config = ConformerCTCConfig(**TINY)
    assert ConformerCTCConfig.from_dict(config.to_dict()) == config
    assert all(isinstance(v, int | float | type(None)) for v in config.to_dict().values())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_heads=3), "d_model=16 must be divisible by num_heads=3"),
        (dict(conv_kernel_size=4), "conv_kernel_size=4 must be odd"),
        (dict(vocab_size=1), "vocab_size=1"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(time_mask_max_ratio=1.0), "time_mask_max_ratio=1.0"),
    ],
)
def test_config_rejects_bad_values_naming_them(overrides, message):
    with pytest.raises(ValueError, match=message):
        ConformerCTCConfig(**{**TINY, **overrides})


def test_config_from_dict_rejects_unknown_keys_listing_allowed_ones():
    with pytest.raises(ValueError, match=r"ConformerCTCConfig got unknown key\(s\) \['d_modle'\]; "
                                          r"allowed: \[.*'d_model'"):
        ConformerCTCConfig.from_dict({**TINY, "d_modle": 8})
