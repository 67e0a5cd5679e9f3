"""Named model sizes land in their parameter-count ranges."""

import pytest

from asrquant.models import MODEL_SIZES, build_model, size_config

PARAM_RANGES = {  # millions
    "cpu": (1.0, 3.0),
    "s": (7.0, 12.0),  # Conformer paper S: 10.3 M with its LSTM decoder
    "m": (22.0, 35.0),  # paper M: 30.7 M
    "l": (100.0, 130.0),  # paper L: 118.8 M
}


def test_every_named_size_has_a_target_range():
    assert set(MODEL_SIZES) == set(PARAM_RANGES)


@pytest.mark.parametrize("size", sorted(PARAM_RANGES))
def test_parameter_count_is_in_target_range(size):
    model = build_model(size, vocab_size=128)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    low, high = PARAM_RANGES[size]
    assert low <= millions <= high, f"{size}: {millions:.2f} M params"


def test_overrides_replace_size_defaults():
    config = size_config("s", vocab_size=30, num_layers=2, dropout=0.0)
    assert (config.num_layers, config.dropout, config.d_model, config.vocab_size) == (
        2,
        0.0,
        144,
        30,
    )


def test_unknown_size_lists_allowed_ones():
    allowed = r"\['cpu', 'l', 'm', 's'\]"
    with pytest.raises(ValueError, match=r"size='xl' is invalid; allowed: " + allowed):
        build_model("xl", vocab_size=30)


def test_unknown_override_is_refused():
    with pytest.raises(ValueError, match="num_layer"):
        build_model("cpu", vocab_size=30, num_layer=3)
