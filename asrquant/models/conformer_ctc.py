"""Conformer-CTC speech recognizer.

audio (B, T) 16 kHz -> log-mel (80 bins, 25 ms / 10 ms) -> global mean/std normalisation
-> SpecAugment (training only) -> 2 x Conv2d(3x3, stride 2) subsampling (x4 fewer frames)
-> torchaudio Conformer encoder -> Linear CTC head (blank = 0) -> log-probs (B, T', V).

Every length is computed exactly from sample counts, and nothing a valid frame sees depends on
the padding, so an utterance gets the same outputs alone or padded in any batch (eval mode).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn
from torchaudio.models.conformer import ConformerLayer

from asrquant.checks import check_keys
from asrquant.data.audio import SAMPLE_RATE

N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms shift
LOG_MEL_FLOOR = 1e-6
# Smallest per-bin std the normaliser divides by: a bin that never varies in the fitting
# data (e.g. silence) would otherwise blow up on any other audio.
MIN_FEATURE_STD = 1e-2
# Two 3x3 stride-2 convolutions need 7 input frames to produce one output frame.
MIN_FRAMES = 7
MIN_AUDIO_SAMPLES = N_FFT + (MIN_FRAMES - 1) * HOP_LENGTH  # 1360 samples = 85 ms


@dataclass
class ConformerCTCConfig:
    """All hyper-parameters of a ConformerCTC; plain values only, so it fits in a checkpoint."""

    vocab_size: int  # including the CTC blank, which is id 0
    d_model: int = 144
    num_layers: int = 16
    num_heads: int = 4
    ffn_dim: int = 576
    conv_kernel_size: int = 31  # depthwise convolution in each Conformer block
    dropout: float = 0.1
    subsampling_channels: int | None = None  # channels of the subsampling convs; None = d_model
    n_mels: int = 80
    # SpecAugment (training only): each mask's width is drawn uniformly below its maximum width
    freq_masks: int = 2
    freq_mask_width: int = 27
    time_masks: int = 2
    time_mask_width: int = 40  # frames
    time_mask_max_ratio: float = 0.2  # a time mask also covers at most this share of an utterance

    def __post_init__(self) -> None:
        positive = ("vocab_size", "d_model", "num_layers", "num_heads", "ffn_dim", "n_mels")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        non_negative = ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size={self.vocab_size} must be >= 2 (blank + one token)")
        if self.d_model % self.num_heads != 0:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}"
            )
        if self.conv_kernel_size < 1 or self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size={self.conv_kernel_size} must be odd and >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.subsampling_channels is not None and self.subsampling_channels < 1:
            raise ValueError(
                f"subsampling_channels={self.subsampling_channels} must be >= 1 or None (= d_model)"
            )
        if self.n_mels < MIN_FRAMES:
            raise ValueError(f"n_mels={self.n_mels} must be >= {MIN_FRAMES} for the subsampling")
        if self.freq_mask_width > self.n_mels:
            raise ValueError(
                f"freq_mask_width={self.freq_mask_width} must be <= n_mels={self.n_mels}"
            )
        if not 0.0 < self.time_mask_max_ratio < 1.0:
            raise ValueError(f"time_mask_max_ratio={self.time_mask_max_ratio} must be in (0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ConformerCTCConfig:
        check_keys("ConformerCTCConfig", values, (f.name for f in dataclasses.fields(cls)))
        return cls(**values)


def frame_lengths(audio_lens: Tensor) -> Tensor:
    """Number of log-mel frames of each utterance (windows lying fully inside the audio)."""
    return ((audio_lens - N_FFT).div(HOP_LENGTH, rounding_mode="floor") + 1).clamp(min=0)


def subsampled_lengths(frame_lens: Tensor) -> Tensor:
    """Frames left after two unpadded 3x3 stride-2 convolutions: L -> (L - 1) // 2, twice."""
    once = (frame_lens - 1).div(2, rounding_mode="floor")
    return (once - 1).div(2, rounding_mode="floor").clamp(min=0)


def padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B, max_len) bool, True on the padding frames beyond each length."""
    return torch.arange(max_len, device=lengths.device) >= lengths[:, None]


class ConvSubsampling(nn.Module):
    """Conformer-paper front: two 3x3 stride-2 Conv2d + ReLU over (time, mel), then Linear.

    Without padding, a valid output frame only ever reads valid input frames.
    """

    def __init__(self, n_mels: int, channels: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        mels_out = ((n_mels - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * mels_out, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, n_mels), (B,) -> (B, T', d_model), (B,)."""
        x = self.conv(feats.unsqueeze(1))  # (B, C, T', mels_out)
        batch, channels, frames, mels = x.shape
        x = x.transpose(1, 2).reshape(batch, frames, channels * mels)
        return self.dropout(self.out(x)), subsampled_lengths(feat_lens)


def conformer_layer_forward(layer: ConformerLayer, x: Tensor, pad_mask: Tensor) -> Tensor:
    """torchaudio's ConformerLayer.forward (convolution_first=False) with one change: padded
    frames are zeroed right before the depthwise convolution, whose kernel would otherwise read
    them into the last valid frames and make outputs depend on the rest of the batch.

    x: (T, B, D); pad_mask: (B, T), True on padding.
    """
    x = x + 0.5 * layer.ffn1(x)

    residual = x
    h = layer.self_attn_layer_norm(x)
    h, _ = layer.self_attn(h, h, h, key_padding_mask=pad_mask, need_weights=False)
    x = residual + layer.self_attn_dropout(h)

    conv = layer.conv_module
    pointwise_in, glu, depthwise, norm, activation, pointwise_out, dropout = conv.sequential
    h = conv.layer_norm(x).permute(1, 2, 0)  # (B, D, T)
    h = glu(pointwise_in(h)).masked_fill(pad_mask[:, None, :], 0.0)
    h = dropout(pointwise_out(activation(norm(depthwise(h)))))
    x = x + h.permute(2, 0, 1)

    x = x + 0.5 * layer.ffn2(x)
    return layer.final_layer_norm(x)


class ConformerCTC(nn.Module):
    """Conformer encoder with a CTC head; see the module docstring for the pipeline.

    The feature normaliser (`feat_mean`, `feat_std`, saved in the state_dict) starts as the
    identity; call `fit_normalizer` on training audio before training.
    """

    def __init__(self, config: ConformerCTCConfig) -> None:
        super().__init__()
        self.config = config
        # The filterbank's construction reads values (it cannot run on the meta device, which
        # loaders use to build a model without memory), and it is small: always on the CPU.
        with torch.device("cpu"):
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=SAMPLE_RATE,
                n_fft=N_FFT,
                win_length=N_FFT,
                hop_length=HOP_LENGTH,
                n_mels=config.n_mels,
                # center=True would reflect-pad the ends, so the last frames of an utterance
                # would differ between the utterance alone and the same one zero-padded in a
                # batch.
                center=False,
            )
        self.register_buffer("feat_mean", torch.zeros(config.n_mels))
        self.register_buffer("feat_std", torch.ones(config.n_mels))
        self.freq_masking = torchaudio.transforms.FrequencyMasking(config.freq_mask_width)
        self.time_masking = torchaudio.transforms.TimeMasking(
            config.time_mask_width, p=config.time_mask_max_ratio
        )
        self.subsampling = ConvSubsampling(
            n_mels=config.n_mels,
            channels=config.subsampling_channels or config.d_model,
            d_model=config.d_model,
            dropout=config.dropout,
        )
        self.encoder = torchaudio.models.Conformer(
            input_dim=config.d_model,
            num_heads=config.num_heads,
            ffn_dim=config.ffn_dim,
            num_layers=config.num_layers,
            depthwise_conv_kernel_size=config.conv_kernel_size,
            dropout=config.dropout,
        )
        self.ctc_head = nn.Linear(config.d_model, config.vocab_size)

    @staticmethod
    def output_lengths(audio_lens: Tensor) -> Tensor:
        """Number of CTC output frames for each audio length in samples."""
        return subsampled_lengths(frame_lengths(audio_lens))

    def log_mel(self, audio: Tensor) -> Tensor:
        """(B, T) -> (B, n_mels, frames) un-normalised log-mel, always computed in float32."""
        with torch.autocast(device_type=audio.device.type, enabled=False):
            return torch.log(self.mel(audio.float()) + LOG_MEL_FLOOR)

    def compute_features(self, audio: Tensor, audio_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) audio -> normalised (and, in training, SpecAugmented) features (B, T_f, n_mels)
        with zeros on padding frames, and their lengths (B,). T_f = max length."""
        _check_audio_batch(audio, audio_lens)
        feat_lens = frame_lengths(audio_lens)
        feats = self.log_mel(audio)[..., : int(feat_lens.max())]
        feats = (feats - self.feat_mean[:, None]) / self.feat_std[:, None]
        feats = feats.masked_fill(padding_mask(feat_lens, feats.size(-1))[:, None, :], 0.0)
        if self.training:
            feats = self.spec_augment(feats, feat_lens)
        return feats.transpose(1, 2), feat_lens

    def spec_augment(self, feats: Tensor, feat_lens: Tensor) -> Tensor:
        """Frequency and time masks (value 0 = the normalised mean) drawn independently for each
        utterance and only within its valid frames. feats: (B, n_mels, T)."""
        cfg = self.config
        feats = feats.clone()
        for i, length in enumerate(feat_lens.tolist()):
            utterance = feats[i, :, :length]
            for _ in range(cfg.freq_masks):
                utterance = self.freq_masking(utterance)
            for _ in range(cfg.time_masks):
                utterance = self.time_masking(utterance)
            feats[i, :, :length] = utterance
        return feats

    def encode_features(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, n_mels) features -> encoder output (B, T', d_model) and lengths (B,)."""
        x, lens = self.subsampling(feats, feat_lens)
        pad_mask = padding_mask(lens, x.size(1))
        x = x.transpose(0, 1)  # torchaudio's Conformer layers work on (T, B, D)
        for layer in self.encoder.conformer_layers:
            x = conformer_layer_forward(layer, x, pad_mask)
        return x.transpose(0, 1), lens

    def forward(self, audio: Tensor, audio_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) float audio at 16 kHz, (B,) lengths in samples -> CTC log-probs (B, T', V) in
        float32 and output lengths (B,); T' = max output length. Frames beyond a length are
        padding and carry no meaning."""
        feats, feat_lens = self.compute_features(audio, audio_lens)
        return self.forward_features(feats, feat_lens)

    def forward_features(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """`forward` from (B, T, n_mels) normalised (and, in training, augmented) features:
        distillation gives the teacher the very features the student saw."""
        encoded, out_lens = self.encode_features(feats, feat_lens)
        logits = self.ctc_head(encoded)
        return torch.log_softmax(logits.float(), dim=-1), out_lens

    @torch.no_grad()
    def fit_normalizer(self, waveforms: Iterable[Tensor]) -> None:
        """Set `feat_mean`/`feat_std` to the per-bin mean and std of the log-mel frames of
        `waveforms` (1-D 16 kHz tensors), streamed one at a time with float64 running sums."""
        device = self.feat_mean.device
        total = torch.zeros(self.config.n_mels, dtype=torch.float64, device=device)
        total_sq = torch.zeros_like(total)
        num_frames = 0
        for index, waveform in enumerate(waveforms):
            if waveform.dim() != 1:
                raise ValueError(
                    f"waveform {index} has shape {tuple(waveform.shape)}; expected 1-D (samples,)"
                )
            if waveform.numel() < N_FFT:
                raise ValueError(
                    f"waveform {index} has {waveform.numel()} samples; at least {N_FFT} needed"
                )
            log_mel = self.log_mel(waveform[None].to(device))[0].double()  # (n_mels, frames)
            total += log_mel.sum(dim=1)
            total_sq += log_mel.square().sum(dim=1)
            num_frames += log_mel.size(1)
        if num_frames == 0:
            raise ValueError("fit_normalizer got no waveforms")
        mean = total / num_frames
        var = (total_sq / num_frames - mean.square()).clamp(min=0.0)
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(var.sqrt().clamp(min=MIN_FEATURE_STD))


def _check_audio_batch(audio: Tensor, audio_lens: Tensor) -> None:
    if audio.dim() != 2:
        raise ValueError(f"audio has shape {tuple(audio.shape)}; expected (batch, samples)")
    if audio_lens.shape != (audio.size(0),):
        raise ValueError(
            f"audio_lens has shape {tuple(audio_lens.shape)}; expected ({audio.size(0)},)"
        )
    longest, shortest = int(audio_lens.max()), int(audio_lens.min())
    if longest > audio.size(1):
        raise ValueError(f"audio_lens has {longest} samples but audio only {audio.size(1)}")
    if shortest < MIN_AUDIO_SAMPLES:
        raise ValueError(
            f"an utterance has {shortest} samples; at least {MIN_AUDIO_SAMPLES} "
            f"({MIN_AUDIO_SAMPLES / SAMPLE_RATE * 1000:.0f} ms) are needed for one output frame"
        )
