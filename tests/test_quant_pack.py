"""Dense packing: exact round trip for every bit width, exact byte counts."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asrquant.quant import QuantSpec, quantize
from asrquant.quant.pack import (
    from_unsigned,
    pack,
    packed_nbytes,
    to_unsigned,
    unpack,
)


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**31 - 1))
def test_unpack_inverts_pack_for_every_width_and_length(bits, n, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.int64).to(torch.uint8)
    data = pack(codes, bits)
    assert data.dtype == torch.uint8 and data.numel() == packed_nbytes(n, bits)
    assert torch.equal(unpack(data, bits, n), codes)


@pytest.mark.parametrize("bits, n, nbytes", [(2, 4, 1), (2, 5, 2), (3, 8, 3), (3, 9, 4),
                                             (4, 3, 2), (1, 17, 3), (8, 5, 5), (5, 8, 5)])
def test_packed_size_is_ceil_of_n_times_bits_over_8(bits, n, nbytes):
    assert pack(torch.zeros(n, dtype=torch.uint8), bits).numel() == nbytes


def test_two_bit_codes_go_four_to_a_byte_little_endian():
    assert pack(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [
        1 | 2 << 2 | 3 << 4]


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantized_codes_survive_packing(bits, symmetric):
    w = torch.randn(7, 45)
    qt = quantize(w, QuantSpec(bits=bits, symmetric=symmetric, group_size=16))
    u = to_unsigned(qt.codes, bits, symmetric)
    back = from_unsigned(unpack(pack(u, bits), bits, u.numel()), bits, symmetric)
    assert torch.equal(back.reshape(qt.codes.shape), qt.codes)


def test_bad_widths_and_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="bits=9"):
        pack(torch.zeros(3, dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="expects 1-D uint8 of 2 bytes for 5 codes at 3 bits"):
        unpack(torch.zeros(3, dtype=torch.uint8), 3, 5)


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(1, 8), symmetric=st.booleans(),
       granularity=st.sampled_from(["tensor", "channel", "group"]),
       group_size=st.sampled_from([1, 3, 8, 32, 50]), rows=st.integers(1, 6),
       cols=st.integers(1, 70), seed=st.integers(0, 2**31 - 1),
       scale_dtype=st.sampled_from(["float32", "float16", "bfloat16"]))
def test_packed_weight_decodes_exactly_what_dequantize_gives(bits, symmetric, granularity,
                                                             group_size, rows, cols, seed,
                                                             scale_dtype):
    from asrquant.quant import dequantize
    from asrquant.quant.packed import PackedWeight

    if symmetric and bits == 1:
        symmetric = False
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity,
                     group_size=group_size if granularity == "group" else None,
                     scale_dtype=scale_dtype)
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    qt = quantize(w, spec)
    decoded = PackedWeight.from_quantized(qt)()
    assert torch.equal(decoded, dequantize(qt))


def test_any_module_can_be_packed_and_decodes_exactly_its_fake_quantized_outputs():
    """The generic packer takes any nn.Module (here a torchaudio Conformer, random weights)
    and a recipe's plan; the packed tensors, put back with pack_module_weights, give the
    fake-quantized model's outputs bit for bit (atol=0), and every planned weight is packed."""
    import torchaudio
    from torch.nn.utils import parametrize

    from asrquant.quant import QuantRecipe, QuantSpec, attach_fake_quant, detach_fake_quant
    from asrquant.quant.pack import packed_nbytes
    from asrquant.quant.packed import SEP, PackedWeight, pack_module_weights, packed_state_dict

    torch.manual_seed(0)
    model = torchaudio.models.Conformer(input_dim=32, num_heads=2, ffn_dim=64, num_layers=1,
                                        depthwise_conv_kernel_size=7).eval()
    recipe = QuantRecipe(QuantSpec(bits=2, group_size=16))
    plan = recipe.plan(model)
    tensors, quantized = packed_state_dict(model, plan)
    assert sorted(quantized) == sorted(plan) and len(plan) > 5
    for name in plan:
        assert name not in tensors
        assert tensors[name + SEP + "packed"].numel() == packed_nbytes(
            math.prod(quantized[name]["shape"]), 2)
    x, lengths = torch.randn(2, 20, 32), torch.tensor([20, 13])
    attach_fake_quant(model, recipe)
    with torch.no_grad(), parametrize.cached():
        want, _ = model(x, lengths)
    detach_fake_quant(model)
    weights = {}
    for name, info in quantized.items():
        spec = QuantSpec.from_dict(info["spec"])
        weights[name] = PackedWeight(tensors[name + SEP + "packed"], tensors[name + SEP + "scale"],
                                     tensors.get(name + SEP + "zero_point"), info["shape"],
                                     getattr(torch, info["dtype"]), spec)
    pack_module_weights(model, weights)
    with torch.no_grad():
        got, _ = model(x, lengths)
    assert torch.equal(got, want)


def test_the_packer_refuses_a_plan_that_names_no_tensor_of_the_model():
    from asrquant.quant.packed import packed_state_dict

    with pytest.raises(ValueError, match=r"plan names \['nope.weight'\]"):
        packed_state_dict(torch.nn.Linear(4, 4), {"nope.weight": QuantSpec(bits=4)})
