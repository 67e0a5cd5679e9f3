"""QuantSpec: every field is validated, the error names field, value and what is allowed."""

import pytest
import torch

from asrquant.quant import QuantSpec, code_range, num_levels


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"bits": 0}, "bits"),
        ({"bits": 9}, "bits"),
        ({"bits": "4"}, "bits"),
        ({"bits": 4.0}, "bits"),
        ({"bits": True}, "bits"),
        ({"bits": 1, "symmetric": True}, "bits"),
        ({"symmetric": "yes"}, "symmetric"),
        ({"granularity": "row"}, "granularity"),
        ({"granularity": "group", "group_size": 0}, "group_size"),
        ({"granularity": "group", "group_size": -32}, "group_size"),
        ({"granularity": "group", "group_size": None}, "group_size"),
        ({"granularity": "group", "group_size": 32.5}, "group_size"),
        ({"clip": "percentile"}, "clip"),
        ({"clip": "fixed", "clip_ratio": 0.0}, "clip_ratio"),
        ({"clip": "fixed", "clip_ratio": 1.5}, "clip_ratio"),
        ({"clip_ratio": "0.9"}, "clip_ratio"),
        ({"clip": "mse", "clip_grid": ()}, "clip_grid"),
        ({"clip": "mse", "clip_grid": (1.0, 0.0)}, "clip_grid[1]"),
        ({"clip": "mse", "clip_grid": (1.0, float("nan"))}, "clip_grid[1]"),
        ({"scale_dtype": "float8"}, "scale_dtype"),
        ({"scale_dtype": torch.int8}, "scale_dtype"),
        ({"zero_point_dtype": "int4"}, "zero_point_dtype"),
        ({"zero_point_dtype": torch.int8}, "zero_point_dtype"),
    ],
)
def test_every_bad_field_raises_value_error_naming_it(kwargs, field):
    with pytest.raises(ValueError) as e:
        QuantSpec(**kwargs)
    msg = str(e.value)
    assert f"QuantSpec.{field}=" in msg
    assert "allowed" in msg


def test_from_dict_rejects_unknown_keys_by_name():
    with pytest.raises(ValueError, match=r"QuantSpec got unknown key\(s\) \['bitz'\]"):
        QuantSpec.from_dict({"bitz": 2})


def test_spec_round_trips_through_dict():
    spec = QuantSpec(bits=3, symmetric=True, granularity="group", group_size=64, clip="mse",
                     clip_grid=(1.0, 0.9, 0.8), scale_dtype=torch.bfloat16)
    assert spec.scale_dtype == "bfloat16"
    assert QuantSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("bits", range(2, 9))
def test_symmetric_grid_is_centred_with_exact_zero(bits):
    lo, hi = code_range(bits, symmetric=True)
    assert lo == -hi and hi == 2 ** (bits - 1) - 1
    assert num_levels(bits, True) == 2**bits - 1


@pytest.mark.parametrize("bits", range(1, 9))
def test_asymmetric_grid_uses_all_codes(bits):
    assert code_range(bits, symmetric=False) == (0, 2**bits - 1)
    assert num_levels(bits, False) == 2**bits


def test_two_bit_grids_match_the_paper():
    assert code_range(2, True) == (-1, 1)
    assert num_levels(2, False) == 4


def test_zero_point_dtype_defaults_to_the_scale_dtype_and_counts_its_bits():
    assert QuantSpec(scale_dtype="bfloat16").zero_point_dtype == "bfloat16"
    assert QuantSpec(bits=2).zero_point_bits == 16
    assert QuantSpec(bits=2, zero_point_dtype="uint8").zero_point_bits == 8
    assert QuantSpec(bits=2, symmetric=True, zero_point_dtype="uint8").zero_point_bits == 0
    old = QuantSpec().to_dict()
    del old["zero_point_dtype"]  # a spec written before the field existed
    assert QuantSpec.from_dict(old) == QuantSpec()


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_a_group_size_that_contradicts_the_granularity_is_an_error(granularity):
    """Given explicitly, a group size with per-channel or per-tensor scales is refused (it
    used to be dropped silently); left unset it is None there and 128 for groups."""
    with pytest.raises(ValueError, match=rf"QuantSpec.group_size=64 is invalid; allowed: None "
                                         rf"when granularity='{granularity}'"):
        QuantSpec(bits=4, granularity=granularity, group_size=64)
    assert QuantSpec(bits=4, granularity=granularity).group_size is None
    assert QuantSpec(bits=4, granularity=granularity, group_size=None).group_size is None
    assert QuantSpec(bits=4).group_size == 128
