"""Size accounting of a quantization plan: what each parameter costs, and the totals."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .pack import packed_nbytes
from .primitives import group_layout
from .spec import QuantSpec


def _dtype_bytes(dtype: torch.dtype) -> int:
    if dtype.is_floating_point:
        return torch.finfo(dtype).bits // 8
    if dtype == torch.bool:
        return 1
    return torch.iinfo(dtype).bits // 8


@dataclass(frozen=True)
class ParamRow:
    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    bits: int | None = None  # None: kept at its own dtype
    symmetric: bool | None = None
    granularity: str | None = None
    group_size: int | None = None  # effective group length (<= row length)
    clip: str | None = None
    code_bytes: int = 0
    scale_bytes: int = 0
    float_bytes: int = 0  # bytes if kept unquantized at its own dtype

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    @property
    def bytes(self) -> int:
        return self.code_bytes + self.scale_bytes if self.quantized else self.float_bytes


def param_row(name: str, p: torch.Tensor, spec: QuantSpec | None) -> ParamRow:
    numel = p.numel()
    base = dict(
        name=name,
        shape=tuple(p.shape),
        dtype=str(p.dtype).replace("torch.", ""),
        numel=numel,
        float_bytes=numel * _dtype_bytes(p.dtype),
    )
    if spec is None:
        return ParamRow(**base)
    layout = group_layout(p.shape, spec)
    return ParamRow(
        **base,
        bits=spec.bits,
        symmetric=spec.symmetric,
        granularity=spec.granularity,
        group_size=layout.group_len if spec.granularity == "group" else None,
        clip=spec.clip,
        code_bytes=math.ceil(numel * spec.bits / 8),
        scale_bytes=qparam_bytes(layout.rows, layout.num_scales, spec),
    )


def qparam_bytes(rows: int, num_scales: int, spec: QuantSpec) -> int:
    """Bytes of a tensor's scales and zero points as stored: per group a scale at
    `scale_dtype`, or with `scale_bits` a k-bit code packed per tensor plus per row a
    super-scale at `scale_dtype`; asymmetric zero points at `zero_point_dtype`, or packed at
    `bits` bits per tensor."""
    dtype_bytes = spec.scale_dtype_bits // 8
    if spec.scale_bits is None:
        scales = num_scales * dtype_bytes
    else:
        scales = packed_nbytes(num_scales, spec.scale_bits) + rows * dtype_bytes
    if spec.zero_point_dtype == "packed":
        zero_points = packed_nbytes(num_scales, spec.zero_point_bits)
    else:
        zero_points = num_scales * spec.zero_point_bits // 8
    return scales + zero_points


@dataclass
class QuantReport:
    """Per-parameter rows and totals of a model under a quantization recipe.

    Sizes count parameters only (buffers such as feature statistics are not weights; their
    bytes are `buffer_bytes`, and `stored_bytes` = parameters + buffers predicts the size of an
    exported file without its header):
    quantized parameters at their code width (densely packed, rounded up to whole bytes per
    tensor) plus one scale (and one zero point if asymmetric) per group at `scale_dtype`
    (and `zero_point_dtype`), or as `qparam_bytes` counts them for double-quantized scales
    and packed zero points;
    other parameters at their own dtype.
    `left_float` names the matrices and kernels kept float, with the reason (see
    `asrquant.quant.recipe.left_float`).
    """

    rows: list[ParamRow] = field(default_factory=list)
    recipe_name: str = ""
    buffer_bytes: int = 0  # persistent buffers (e.g. feature statistics): stored, not weights
    left_float: dict[str, str] = field(default_factory=dict)  # matrix kept float -> why

    @property
    def quantized_rows(self) -> list[ParamRow]:
        return [r for r in self.rows if r.quantized]

    @property
    def num_params(self) -> int:
        return sum(r.numel for r in self.rows)

    @property
    def num_quantized(self) -> int:
        return sum(r.numel for r in self.quantized_rows)

    @property
    def float32_bytes(self) -> int:
        return 4 * self.num_params

    @property
    def quantized_bytes(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def stored_bytes(self) -> int:
        return self.quantized_bytes + self.buffer_bytes

    @property
    def effective_bits(self) -> float:
        """Bits per quantized weight, codes plus scales and zero points."""
        n = self.num_quantized
        if n == 0:
            return float("nan")
        return 8 * sum(r.code_bytes + r.scale_bytes for r in self.quantized_rows) / n

    @property
    def bits_per_weight(self) -> float:
        """`effective_bits`, or 32.0 when nothing is quantized (a float model): the number
        that results tables and loggers show."""
        return self.effective_bits if self.num_quantized else 32.0

    @property
    def quantized_share(self) -> float:
        return self.num_quantized / self.num_params if self.num_params else 0.0

    @property
    def compression(self) -> float:
        return self.float32_bytes / self.quantized_bytes if self.quantized_bytes else float("nan")

    def totals(self) -> dict:
        return {
            "num_params": self.num_params,
            "num_quantized": self.num_quantized,
            "quantized_share": self.quantized_share,
            "float32_bytes": self.float32_bytes,
            "quantized_bytes": self.quantized_bytes,
            "float32_mb": self.float32_bytes / 1e6,
            "size_mb": self.quantized_bytes / 1e6,
            "effective_bits": self.effective_bits,
            "bits_per_weight": self.bits_per_weight,
            "compression": self.compression,
            "buffer_bytes": self.buffer_bytes,
            "stored_bytes": self.stored_bytes,
        }

    def to_dict(self) -> dict:
        return {
            "recipe": self.recipe_name,
            "totals": self.totals(),
            "params": [asdict(r) for r in self.rows],
            "left_float": dict(self.left_float),
        }

    def table(self, quantized_only: bool = False) -> str:
        head = ("name", "shape", "bits", "sym", "gran", "group", "clip", "numel", "bytes")
        lines = []
        for r in self.rows:
            if quantized_only and not r.quantized:
                continue
            lines.append(
                (
                    r.name,
                    "x".join(map(str, r.shape)),
                    str(r.bits) if r.quantized else r.dtype,
                    "" if r.symmetric is None else ("y" if r.symmetric else "n"),
                    r.granularity or "",
                    "" if r.group_size is None else str(r.group_size),
                    r.clip or "",
                    str(r.numel),
                    str(r.bytes),
                )
            )
        widths = [max([len(h), *(len(row[i]) for row in lines)]) for i, h in enumerate(head)]
        fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        out = [fmt(head), fmt(tuple("-" * w for w in widths))] + [fmt(row) for row in lines]
        t = self.totals()
        out.append(
            f"params {t['num_params']:,} (quantized {t['quantized_share']:.1%}) | "
            f"float32 {t['float32_mb']:.3f} MB -> {t['size_mb']:.3f} MB "
            f"(x{t['compression']:.2f}) | {t['effective_bits']:.3f} bits/quantized weight"
        )
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()
