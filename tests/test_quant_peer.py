"""Cross-check against a peer: torchao's affine quantization primitives."""

import pytest
import torch

from asrquant.quant import QuantSpec, dequantize, quantize

qp = pytest.importorskip("torchao.quantization.quant_primitives",
                         reason="torchao is a dev (test) dependency: pip install -e '.[dev]'")


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 128])
def test_asymmetric_min_max_matches_torchao_quantize_affine(bits, group_size):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(bits * group_size))
    block = (1, group_size)
    qmax = 2**bits - 1
    scale, zp = qp.choose_qparams_affine(w, qp.MappingType.ASYMMETRIC, block, torch.uint8,
                                         0, qmax, scale_dtype=torch.float32,
                                         zero_point_dtype=torch.int32)
    ao_codes = qp.quantize_affine(w, block, scale, zp, torch.uint8, 0, qmax)
    ao_deq = qp.dequantize_affine(ao_codes, block, scale, zp, torch.uint8, 0, qmax)

    spec = QuantSpec(bits=bits, symmetric=False, granularity="group", group_size=group_size,
                     scale_dtype="float32")
    qt = quantize(w, spec)
    assert torch.equal(qt.codes, ao_codes)
    torch.testing.assert_close(qt.scale, scale.reshape(qt.scale.shape))
    torch.testing.assert_close(qt.zero_point, zp.reshape(qt.scale.shape).float())
    torch.testing.assert_close(dequantize(qt), ao_deq, rtol=1e-6, atol=1e-7)
