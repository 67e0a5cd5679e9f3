"""What a quantizer does to one weight tensor: `QuantSpec`, and the integer grid per bit width.

Bit widths are data: `code_range(bits, symmetric)` is the single table the quantizer,
the report and the packer read, so no other module hard-codes a level count.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from asrquant.checks import check_bool, check_choice, check_keys, check_number, invalid

GRANULARITIES = ("tensor", "channel", "group")
CLIP_METHODS = ("none", "fixed", "mse")
SCALE_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Zero points are integers in [0, 2^bits - 1], exact in every dtype below (bfloat16 holds
# integers up to 256 exactly), so their dtype changes the stored bytes, never the codes.
# "packed": at the code width `bits`, densely packed like the codes (uint8 in memory).
ZERO_POINT_DTYPES = {**SCALE_DTYPES, "uint8": torch.uint8, "packed": torch.uint8}
MIN_BITS, MAX_BITS = 1, 8
MIN_SCALE_BITS, MAX_SCALE_BITS = 2, 8  # double quantization: k-bit codes of the group scales
DEFAULT_GROUP_SIZE = 128


class _Auto:
    """`group_size` left unset: DEFAULT_GROUP_SIZE for granularity 'group', else None."""

    def __repr__(self) -> str:
        return "auto"


AUTO = _Auto()
DEFAULT_CLIP_GRID = tuple(round(1.0 - 0.05 * i, 2) for i in range(16))  # 1.00, 0.95, ..., 0.25


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Smallest and largest integer code.

    Symmetric grids are centred on an exact zero and drop the most negative two's-complement
    code so that +q and -q are both representable: at 2 bits {-1, 0, 1}. Asymmetric grids
    use all 2**bits codes, [0, 2**bits - 1], with an integer zero point.
    """
    if symmetric:
        q = 2 ** (bits - 1) - 1
        return -q, q
    return 0, 2**bits - 1


def num_levels(bits: int, symmetric: bool) -> int:
    lo, hi = code_range(bits, symmetric)
    return hi - lo + 1


def _dtype_name(value) -> str:
    if isinstance(value, torch.dtype):
        for name, dt in SCALE_DTYPES.items():
            if dt == value:
                return name
        return str(value)
    return str(value)


@dataclass(frozen=True)
class QuantSpec:
    """How one weight tensor is quantized.

    bits: code width, 1..8.
    symmetric: True -> codes in [-(2^(b-1)-1), 2^(b-1)-1], no zero point;
               False -> codes in [0, 2^b-1] with an integer zero point.
    granularity: "tensor" (one scale), "channel" (one per output row),
                 "group" (one per `group_size` consecutive weights of a row: the paper's
                 sub-channel quantization).
    group_size: weights per group along the (flattened) input dimension, for "group"
                (unset: 128); with "tensor" or "channel" it must be unset or None.
    clip: "none" (min/max range), "fixed" (range scaled by `clip_ratio`),
          "mse" (per group the ratio from `clip_grid` with the least squared error).
    scale_dtype: "float32" | "float16" | "bfloat16"; scales are rounded up to it before
                 codes are computed, and counted at its width.
    zero_point_dtype: how asymmetric zero points are stored and counted: one of the scale
                 dtypes or "uint8"; None (default) means the same as `scale_dtype`. Zero
                 points are small integers, exact in all of them: "uint8" saves 8 bits per
                 group against float16 and gives the same codes; "packed" stores them at
                 `bits` bits each, densely packed.
    scale_bits: None (default): one scale per group at `scale_dtype`. k in 2..8: double
                 quantization: per row one super-scale at `scale_dtype` and per group a k-bit
                 code c in [1, 2^k - 1]; the group's scale is c * super in float32.
    """

    bits: int = 4
    symmetric: bool = False
    granularity: str = "group"
    group_size: int | None = AUTO  # type: ignore[assignment]
    clip: str = "none"
    clip_ratio: float = 1.0
    clip_grid: tuple[float, ...] = field(default=DEFAULT_CLIP_GRID)
    scale_dtype: str = "float16"
    zero_point_dtype: str | None = None
    scale_bits: int | None = None

    def __post_init__(self):
        # Accept torch dtypes and lists from configs, but store canonical immutable values.
        object.__setattr__(self, "scale_dtype", _dtype_name(self.scale_dtype))
        zp = self.scale_dtype if self.zero_point_dtype is None else self.zero_point_dtype
        object.__setattr__(self, "zero_point_dtype", _dtype_name(zp))
        if isinstance(self.clip_grid, list):
            object.__setattr__(self, "clip_grid", tuple(self.clip_grid))
        if self.group_size is AUTO:
            auto = DEFAULT_GROUP_SIZE if self.granularity == "group" else None
            object.__setattr__(self, "group_size", auto)
        self.validate()

    def validate(self) -> None:
        where = "QuantSpec."
        check_number(where + "bits", self.bits, ge=MIN_BITS, le=MAX_BITS, integer=True)
        check_bool(where + "symmetric", self.symmetric)
        if self.symmetric and self.bits < 2:
            raise invalid(where + "bits", self.bits,
                          f"2..{MAX_BITS} when symmetric=True (1-bit needs symmetric=False)")
        check_choice(where + "granularity", self.granularity, GRANULARITIES)
        if self.granularity == "group":
            check_number(where + "group_size", self.group_size, ge=1, integer=True)
        elif self.group_size is not None:
            raise invalid(where + "group_size", self.group_size,
                          f"None when granularity={self.granularity!r} (groups are for "
                          "granularity='group')")
        check_choice(where + "clip", self.clip, CLIP_METHODS)
        check_number(where + "clip_ratio", self.clip_ratio, gt=0, le=1)
        grid = self.clip_grid
        if not isinstance(grid, tuple) or len(grid) == 0:
            raise invalid(where + "clip_grid", grid, "a non-empty sequence of ratios in (0, 1]")
        for i, ratio in enumerate(grid):
            check_number(f"{where}clip_grid[{i}]", ratio, gt=0, le=1)
        check_choice(where + "scale_dtype", self.scale_dtype, SCALE_DTYPES)
        check_choice(where + "zero_point_dtype", self.zero_point_dtype, [None, *ZERO_POINT_DTYPES])
        check_number(where + "scale_bits", self.scale_bits, ge=MIN_SCALE_BITS,
                     le=MAX_SCALE_BITS, integer=True, none_ok=True)

    @property
    def qmin(self) -> int:
        return code_range(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return code_range(self.bits, self.symmetric)[1]

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]

    @property
    def scale_dtype_bits(self) -> int:
        """Bits of one value at `scale_dtype` (a group's scale, or with `scale_bits` a row's
        super-scale)."""
        return torch.finfo(self.torch_scale_dtype).bits

    @property
    def torch_zero_point_dtype(self) -> torch.dtype:
        return ZERO_POINT_DTYPES[self.zero_point_dtype]

    @property
    def zero_point_bits(self) -> int:
        """Bits stored per group for the zero point: 0 when symmetric."""
        if self.symmetric:
            return 0
        if self.zero_point_dtype == "packed":
            return self.bits
        return self.torch_zero_point_dtype.itemsize * 8

    @classmethod
    def from_dict(cls, d: dict) -> QuantSpec:
        check_keys("QuantSpec", d, (f.name for f in fields(cls)))
        return cls(**d)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["clip_grid"] = list(d["clip_grid"])
        return d

    def name(self, sep: str = "_") -> str:
        """The one name of a spec: 'int2_asym_g32_mse', 'int4_sym_ch', 'int3_asym_tensor_clip0.9',
        'int2_asym_g32_dq6_zpp' (6-bit scale codes, packed zero points); 'float16' scales and
        zero points at the scale's dtype are the defaults and not named.
        `sep=" "` gives the same name for tables: 'int2 asym g32 mse'."""
        gran = {"tensor": "tensor", "channel": "ch"}.get(self.granularity, f"g{self.group_size}")
        parts = [f"int{self.bits}", "sym" if self.symmetric else "asym", gran]
        parts += {"none": [], "mse": ["mse"], "fixed": [f"clip{self.clip_ratio:g}"]}[self.clip]
        if self.scale_dtype != "float16":
            parts.append(self.scale_dtype)
        if self.scale_bits is not None:
            parts.append(f"dq{self.scale_bits}")
        if not self.symmetric and self.zero_point_dtype != self.scale_dtype:
            zp = self.zero_point_dtype
            parts.append({"uint8": "zpu8", "packed": "zpp"}.get(zp, f"zp{zp}"))
        return sep.join(parts)

    def describe(self) -> str:
        """Short human name, e.g. 'int2 asym g32 mse' (`name` with spaces)."""
        return self.name(" ")
