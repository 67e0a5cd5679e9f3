"""Dense packing of integer codes into bytes, for every bit width 1..8.

Layout: the codes of a tensor, flattened in row-major order and made unsigned (symmetric
codes are offset by qmax), are laid end to end as one little-endian bit stream: code i
occupies bits [i*b, (i+1)*b) and bit k of the stream is bit (k % 8) of byte k // 8. So
2-bit codes go 4 to a byte, 4-bit codes 2 to a byte, 3-bit codes 8 to 3 bytes, and a tensor
of n codes takes exactly ceil(n * b / 8) bytes. `unpack` is the exact inverse.
"""

from __future__ import annotations

import torch

from .spec import code_range


def _lanes(n: int, device) -> torch.Tensor:
    return torch.arange(n, dtype=torch.uint8, device=device)


def packed_nbytes(numel: int, bits: int) -> int:
    return -(-numel * bits // 8)


def to_unsigned(codes: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    lo, _ = code_range(bits, symmetric)
    return (codes.to(torch.int16) - lo).to(torch.uint8)


def from_unsigned(u: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    lo, _ = code_range(bits, symmetric)
    return (u.to(torch.int16) + lo).to(torch.int8 if symmetric else torch.uint8)


def pack(u: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes (any shape, values < 2**bits) -> 1-D uint8 of ceil(n*bits/8) bytes."""
    if not 1 <= bits <= 8:
        raise ValueError(f"pack bits={bits!r} is invalid; allowed: 1..8")
    flat = u.reshape(-1).to(torch.uint8)
    n = flat.numel()
    nbytes = packed_nbytes(n, bits)
    if bits == 8:
        return flat.clone()
    if 8 % bits == 0:  # whole codes per byte: shift and or
        per = 8 // bits
        flat = torch.nn.functional.pad(flat, (0, (-n) % per)).reshape(-1, per)
        shifts = _lanes(per, flat.device) * bits
        return (flat << shifts).sum(dim=1, dtype=torch.uint8)[:nbytes]
    # General widths: expand to bits, regroup by 8, fold into bytes.
    flat = torch.nn.functional.pad(flat, (0, (-n) % 8))
    stream = ((flat.unsqueeze(1) >> _lanes(bits, flat.device)) & 1).reshape(-1, 8)
    return (stream << _lanes(8, flat.device)).sum(dim=1, dtype=torch.uint8)[:nbytes]


def unpack(data: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack`: 1-D uint8 bytes -> 1-D uint8 unsigned codes (numel of them)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"unpack bits={bits!r} is invalid; allowed: 1..8")
    need = packed_nbytes(numel, bits)
    if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() != need:
        raise ValueError(f"unpack expects 1-D uint8 of {need} bytes for {numel} codes at "
                         f"{bits} bits; got {tuple(data.shape)} {data.dtype}")
    if bits == 8:
        return data.clone()
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        per = 8 // bits
        shifts = _lanes(per, data.device) * bits
        return ((data.unsqueeze(1) >> shifts) & mask).reshape(-1)[:numel]
    stream = ((data.unsqueeze(1) >> _lanes(8, data.device)) & 1).reshape(-1)
    stream = torch.nn.functional.pad(stream, (0, (-stream.numel()) % bits))
    stream = stream[: numel * bits].reshape(numel, bits)
    return (stream << _lanes(bits, data.device)).sum(dim=1, dtype=torch.uint8)
