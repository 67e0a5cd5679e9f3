"""The recognizer as an export-ready torch graph: every op maps to one ONNX op or pattern.

`OnnxGraph(module)` takes a float or packed recognizer (`load_quantized`) and computes the same
log-probabilities with what ONNX Runtime runs fast:
  - each quantized Linear whose recipe MatMulNBits can express (2, 4 or 8 bits, groups of a
    power of two >= 16, or per-channel) calls `torch.ops.asrquant.matmul_nbits`, which the
    exporter writes as one `com.microsoft::MatMulNBits` node over our own codes, repacked to
    its layout (blocks along K, codes low-bits-first in each byte); no re-quantization;
  - pointwise Conv1d of the convolution module are such Linears on (B, T, C);
  - the depthwise Conv1d, the subsampling Conv2d and any Linear the op cannot express keep
    their packed codes as a uint8 initializer, decoded in the graph by integer ops (shift,
    and, cast, subtract, multiply: exactly `PackedWeight.forward`'s float32 arithmetic);
    ONNX Runtime folds those constant subgraphs once when the session starts;
  - scales stay at their stored dtype (float16) or as double-quantized codes + super-scales,
    cast / decoded to float32 in the graph (again folded at session start), so the file holds
    what the safetensors file holds;
  - the log-mel front end is a Conv1d with the windowed DFT basis (no STFT op), so the graph
    takes padded 16 kHz waveforms and their lengths, like `ConformerCTC.forward`.

In eager mode the module runs as it is (the custom op's reference decodes and multiplies), so
parity with the packed model can be checked before any ONNX is written.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrquant.models.conformer_ctc import (
    HOP_LENGTH,
    LOG_MEL_FLOOR,
    N_FFT,
    ConformerCTC,
    frame_lengths,
    padding_mask,
    subsampled_lengths,
)
from asrquant.quant import group_layout
from asrquant.quant.pack import pack, packed_nbytes, unpack
from asrquant.quant.packed import PackedWeight

MATMUL_NBITS_BITS = (2, 4, 8)  # what onnxruntime's CPU MatMulNBits runs
MATMUL_NBITS_MIN_BLOCK, MATMUL_NBITS_MAX_BLOCK = 16, 256  # block sizes: powers of two


class OnnxExportError(ValueError):
    """A recipe or model that the ONNX export cannot express; names the layer."""


# --- the MatMulNBits custom op: reference in torch, written as com.microsoft::MatMulNBits ---

@torch.library.custom_op("asrquant::matmul_nbits", mutates_args=())
def matmul_nbits(x: Tensor, qweight: Tensor, scales: Tensor, zero_points: Tensor, K: int,
                 N: int, bits: int, block_size: int, accuracy_level: int) -> Tensor:
    """x (..., K) @ W^T with W (N, K) held as MatMulNBits holds it: qweight (N, n_blocks,
    block_size * bits / 8) uint8, scales (N * n_blocks,) float32, zero_points packed uint8
    (N * ceil(n_blocks * bits / 8),) or float32 (N * n_blocks,); either way
    W = (q - zero_point) * scale. Reference for eager mode: decode, then matmul."""
    w = dequantize_matmul_nbits(qweight, scales, zero_points, K, N, bits, block_size)
    return x @ w.t()


@matmul_nbits.register_fake
def _(x, qweight, scales, zero_points, K, N, bits, block_size, accuracy_level):
    return x.new_empty((*x.shape[:-1], N))


def dequantize_matmul_nbits(qweight: Tensor, scales: Tensor, zero_points: Tensor, K: int,
                            N: int, bits: int, block_size: int) -> Tensor:
    """(N, K) float32 weight of MatMulNBits's inputs: (q - zero_point) * scale per block."""
    n_blocks = qweight.shape[1]
    q = unpack(qweight.reshape(-1), bits, N * n_blocks * block_size).reshape(N, n_blocks, -1)
    if zero_points.dtype == torch.uint8:
        zp_row = packed_nbytes(n_blocks, bits)
        zp = unpack_rows(zero_points.reshape(N, zp_row), bits, n_blocks)
    else:
        zp = zero_points.reshape(N, n_blocks)
    w = (q.to(torch.float32) - zp.to(torch.float32).unsqueeze(-1)) * scales.reshape(
        N, n_blocks, 1)
    return w.reshape(N, -1)[:, :K]


def unpack_rows(packed_rows: Tensor, bits: int, per_row: int) -> Tensor:
    """Each row of packed bytes -> its first `per_row` codes (rows packed separately)."""
    return torch.stack([unpack(r.contiguous(), bits, per_row) for r in packed_rows])


def pack_rows(codes: Tensor, bits: int) -> Tensor:
    """(rows, n) unsigned codes -> (rows, ceil(n * bits / 8)) uint8, each row packed alone."""
    if 8 % bits:  # codes straddle bytes: row by row
        return torch.stack([pack(r, bits) for r in codes])
    # whole codes per byte: pad each row to whole bytes, then one pack of everything
    padded = F.pad(codes, (0, (-codes.shape[1]) % (8 // bits)))
    return pack(padded, bits).reshape(codes.shape[0], -1)


ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits: 0 = float32 compute ... 4 = int8 activations


def check_accuracy_level(level, key: str = "accuracy_level", null: str = "") -> int | None:
    """One rule for the MatMulNBits accuracy level, wherever it is given. `null`: what None
    means where None is allowed (e.g. "as exported")."""
    if level is None and null:
        return None
    if isinstance(level, bool) or level not in ACCURACY_LEVELS:
        allowed = (f"null ({null}), " if null else "") + "0, 1, 2, 3, 4"
        raise ValueError(f"{key}={level!r} is invalid; allowed: {allowed} (MatMulNBits "
                         "compute: 0 = float32, 4 = int8 activations)")
    return int(level)


def onnx_translation_table() -> dict:
    """custom_translation_table for torch.onnx.export: our op -> com.microsoft::MatMulNBits."""
    import onnxscript  # the exporter's own dependency (asrquant[onnx])

    # MatMulNBits is onnxruntime's contrib op: onnx knows no schema for it, so the op is
    # built by name (onnxruntime checks it when the session starts)
    matmul_nbits_op = onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1),
                                           "MatMulNBits", _matmul_nbits_schema())

    def matmul_nbits_onnx(x, qweight, scales, zero_points, K: int, N: int, bits: int,
                          block_size: int, accuracy_level: int):
        return matmul_nbits_op(x, qweight, scales, zero_points, K=K, N=N, bits=bits,
                                block_size=block_size, accuracy_level=accuracy_level)

    def unpack_codes_onnx(packed, bits: int, numel: int):
        return _unpack_codes_onnx(onnxscript.opset18, packed, bits, numel)

    return {torch.ops.asrquant.matmul_nbits.default: matmul_nbits_onnx,
            torch.ops.asrquant.unpack_codes.default: unpack_codes_onnx}


def _matmul_nbits_schema():
    """The part of onnxruntime's MatMulNBits schema (com.microsoft, version 1) we use."""
    from onnx.defs import OpSchema

    param = OpSchema.FormalParameter
    optional = OpSchema.FormalParameterOption.Optional
    return OpSchema(
        "MatMulNBits", "com.microsoft", 1,
        inputs=[param("A", "T1"), param("B", "T2"), param("scales", "T1"),
                param("zero_points", "T3", param_option=optional)],
        outputs=[param("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)"], ""), ("T2", ["tensor(uint8)"], ""),
                          ("T3", ["tensor(uint8)", "tensor(float)"], "")],
        attributes=[OpSchema.Attribute(a, OpSchema.AttrType.INT, "")
                    for a in ("K", "N", "bits", "block_size", "accuracy_level")])


# --- decoding packed codes with ops every runtime has ---

@torch.library.custom_op("asrquant::unpack_codes", mutates_args=())
def unpack_codes(packed: Tensor, bits: int, numel: int) -> Tensor:
    """`asrquant.quant.pack.unpack` as one op: `packed` holds the little-endian bit stream of
    unsigned codes, zero-padded to whole chunks of lcm(bits, 8) bits (`pad_to_chunks`).
    Returns uint8 codes (numel,). Written to ONNX as BitShift / BitwiseAnd / Cast nodes."""
    return unpack(packed[: packed_nbytes(numel, bits)].contiguous(), bits, numel)


@unpack_codes.register_fake
def _(packed, bits, numel):
    return packed.new_empty((numel,))


def unpack_graph(packed: Tensor, bits: int, numel: int) -> Tensor:
    return torch.ops.asrquant.unpack_codes(packed, bits, numel)


def _unpack_codes_onnx(op, packed, bits: int, numel: int):
    """ONNX ops of `unpack_codes`. Chunks of lcm(bits, 8) bits: one byte for 1, 2 and 4 bits
    (shift and mask each byte), else up to 7 bytes joined into a uint64 word first."""
    from onnx import TensorProto

    if bits == 8:
        return op.Slice(packed, op.Constant(value_ints=[0]), op.Constant(value_ints=[numel]))
    chunk_bits = math.lcm(bits, 8)
    chunk_bytes = chunk_bits // 8
    word_type = TensorProto.UINT8 if chunk_bytes == 1 else TensorProto.UINT64
    if chunk_bytes == 1:
        word = packed
    else:
        columns = op.Cast(op.Reshape(packed, op.Constant(value_ints=[-1, chunk_bytes])),
                          to=word_type)
        word = None
        for j in range(chunk_bytes):
            col = op.Gather(columns, op.Constant(value_int=j), axis=1)
            if j:
                col = op.BitShift(col, op.Cast(op.Constant(value_int=8 * j), to=word_type),
                                  direction="LEFT")
            word = col if word is None else op.BitwiseOr(word, col)
    shifts = op.Cast(op.Constant(value_ints=list(range(0, chunk_bits, bits))), to=word_type)
    mask = op.Cast(op.Constant(value_int=(1 << bits) - 1), to=word_type)
    codes = op.BitwiseAnd(op.BitShift(op.Unsqueeze(word, op.Constant(value_ints=[-1])), shifts,
                                      direction="RIGHT"), mask)
    codes = op.Slice(op.Reshape(codes, op.Constant(value_ints=[-1])),
                     op.Constant(value_ints=[0]), op.Constant(value_ints=[numel]))
    return codes if chunk_bytes == 1 else op.Cast(codes, to=TensorProto.UINT8)


def pad_to_chunks(packed: Tensor, bits: int) -> Tensor:
    """Our packed bytes, zero-padded to whole lcm(bits, 8)-bit chunks (< 7 bytes more)."""
    chunk_bytes = math.lcm(bits, 8) // 8
    return F.pad(packed, (0, -packed.numel() % chunk_bytes))


class GraphScales(nn.Module):
    """float32 (rows, n_groups) scales of a packed weight, from what the file stores: float16
    (or other) scales cast, or double-quantized codes times the row's super-scale."""

    def __init__(self, pw: PackedWeight):
        super().__init__()
        self.spec, self.layout = pw.spec, group_layout(pw.shape, pw.spec)
        dq = pw.spec.scale_bits is not None
        self.register_buffer("scale", pad_to_chunks(pw.scale, pw.spec.scale_bits) if dq
                             else pw.scale)
        self.register_buffer("super_scale", pw.super_scale)

    def forward(self) -> Tensor:
        lay = self.layout
        if self.spec.scale_bits is None:
            return self.scale.to(torch.float32)
        codes = unpack_graph(self.scale, self.spec.scale_bits, lay.rows * lay.n_groups)
        return codes.reshape(lay.rows, lay.n_groups).to(torch.float32) * (
            self.super_scale.to(torch.float32).unsqueeze(-1))


def symmetric_offset(spec) -> float:
    """The offset of a symmetric grid: unsigned code u stands for u - qmax (qmax = -qmin)."""
    return float(-spec.qmin)


def integer_offsets(pw: PackedWeight) -> Tensor:
    """(rows, n_groups) uint8 offsets: the zero points (asymmetric), or qmax (symmetric).
    What `GraphOffsets` computes in the graph, here at export time for MatMulNBits."""
    lay = group_layout(pw.shape, pw.spec)
    if pw.zero_point is None:
        return torch.full((lay.rows, lay.n_groups), symmetric_offset(pw.spec)).to(torch.uint8)
    _, zp = pw.qparam_tables()
    return zp.to(torch.float32).to(torch.uint8)  # integers in [0, 2^bits - 1]


class GraphOffsets(nn.Module):
    """float32 (rows, n_groups) offsets of a packed weight: its zero points from what the
    file stores (float16, uint8, or packed codes), or qmax for a symmetric grid."""

    def __init__(self, pw: PackedWeight):
        super().__init__()
        self.spec, self.layout = pw.spec, group_layout(pw.shape, pw.spec)
        zp = pw.zero_point
        if zp is not None and pw.spec.zero_point_dtype == "packed":
            zp = pad_to_chunks(zp, pw.spec.bits)
        self.register_buffer("zero_point", zp)

    def forward(self) -> Tensor:
        lay, spec = self.layout, self.spec
        if self.zero_point is None:
            return torch.full((lay.rows, lay.n_groups), symmetric_offset(spec))
        if spec.zero_point_dtype == "packed":
            codes = unpack_graph(self.zero_point, spec.bits, lay.rows * lay.n_groups)
            return codes.reshape(lay.rows, lay.n_groups).to(torch.float32)
        return self.zero_point.to(torch.float32)


class GraphWeight(nn.Module):
    """A packed weight kept as our codes and decoded in the graph to the float32 tensor that
    `PackedWeight.forward` gives: (u - offset) * scale, the same float32 operations."""

    def __init__(self, pw: PackedWeight):
        super().__init__()
        if pw.dtype != torch.float32:
            raise OnnxExportError(f"weight dtype {pw.dtype} is not exported; float32 only")
        self.spec, self.shape = pw.spec, pw.shape
        self.layout = group_layout(pw.shape, pw.spec)
        self.scales = GraphScales(pw)
        self.offsets = GraphOffsets(pw)
        self.register_buffer("packed", pad_to_chunks(pw.packed, pw.spec.bits))

    def forward(self) -> Tensor:
        lay = self.layout
        u = unpack_graph(self.packed, self.spec.bits, self.shape.numel()).to(torch.float32)
        u = F.pad(u.reshape(lay.rows, lay.row_len), (0, lay.pad))
        w = (u.reshape(lay.rows, lay.n_groups, lay.group_len) - self.offsets().unsqueeze(-1)
             ) * self.scales().unsqueeze(-1)
        return w.reshape(lay.rows, -1)[:, : lay.row_len].reshape(self.shape)


def _pow2_at_least(n: int) -> int:
    return max(MATMUL_NBITS_MIN_BLOCK, 1 << (n - 1).bit_length())


def matmul_nbits_block(pw: PackedWeight) -> int | str:
    """MatMulNBits block size of this packed weight's full blocks, or why the op cannot
    express it. Groups: the group size. Per channel (one group per row): the largest power of
    two <= K up to 256, the row's qparams repeated in each block."""
    spec, lay = pw.spec, group_layout(pw.shape, pw.spec)
    if spec.bits not in MATMUL_NBITS_BITS:
        return f"{spec.bits} bits (MatMulNBits runs bits {list(MATMUL_NBITS_BITS)})"
    if spec.granularity == "tensor":
        return "granularity 'tensor' (MatMulNBits has a scale per row and block)"
    if lay.n_groups == 1:
        if lay.row_len < MATMUL_NBITS_MIN_BLOCK:
            return MATMUL_NBITS_MIN_BLOCK
        return min(MATMUL_NBITS_MAX_BLOCK, 1 << (lay.row_len.bit_length() - 1))
    g = lay.group_len
    if g & (g - 1) or not MATMUL_NBITS_MIN_BLOCK <= g <= MATMUL_NBITS_MAX_BLOCK:
        return (f"group size {g} (MatMulNBits blocks are powers of two in "
                f"[{MATMUL_NBITS_MIN_BLOCK}, {MATMUL_NBITS_MAX_BLOCK}])")
    return g


class NBitsLinear(nn.Module):
    """A packed Linear (x @ W^T + b) as MatMulNBits nodes over our codes in the op's layout:
    blocks along K, codes low-bits-first in each byte, zero points packed per row (symmetric
    grids: qmax). The op's blocks are all one size, so when K is not a multiple of it (K=144,
    groups of 128: a short last group of 16) the row is split in two nodes, the full blocks
    and the tail (its own power-of-two block), whose outputs are added: no padding to a
    whole block in the file. Scales come from `GraphScales` (stored dtype in the file).

    Zero points: at accuracy_level 0 float32, decoded in the graph from the stored ones
    (`GraphOffsets`): onnxruntime then takes its float path, exact and several times faster
    than with uint8 zero points at level 0. At levels 1-4, and for 8 bits (whose CPU kernel
    refuses float zero points), packed uint8 per row (stored as such): what the
    int8-activation kernels (level 4) need."""

    def __init__(self, pw: PackedWeight, bias: Tensor | None, block: int, accuracy_level: int):
        super().__init__()
        spec, lay = pw.spec, group_layout(pw.shape, pw.spec)
        self.K, self.N, self.bits = lay.row_len, lay.rows, spec.bits
        self.accuracy_level = accuracy_level
        self.float_zero_points = accuracy_level == 0 and spec.bits != 8
        codes = unpack(pw.packed, spec.bits, pw.shape.numel()).reshape(self.N, self.K)
        offsets = integer_offsets(pw)  # (N, n_groups)
        full = self.K // block
        per_channel = lay.n_groups == 1
        # (k0, k1, block, first scale column, columns, repeats of each column)
        parts = []
        if full:
            parts.append((0, full * block, block, 0, 1 if per_channel else full,
                          full if per_channel else 1))
        if full * block < self.K:
            tail = self.K - full * block
            parts.append((full * block, self.K, _pow2_at_least(tail),
                          0 if per_channel else full, 1, 1))
        self.parts = parts
        for i, (k0, k1, blk, c0, cols, rep) in enumerate(parts):
            n_blocks = -(-(k1 - k0) // blk)
            part = F.pad(codes[:, k0:k1], (0, n_blocks * blk - (k1 - k0)))
            self.register_buffer(f"qweight{i}", pack_rows(part, spec.bits).reshape(
                self.N, n_blocks, blk * spec.bits // 8))
            if not self.float_zero_points:
                zp = offsets[:, c0:c0 + cols].repeat_interleave(rep, dim=1)
                self.register_buffer(f"zero_points{i}", pack_rows(zp, spec.bits).reshape(-1))
        self.scales = GraphScales(pw)
        self.offsets = GraphOffsets(pw) if self.float_zero_points else None
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def describe(self) -> str:
        blocks = " + ".join(f"K={k1 - k0} block_size={blk}" for k0, k1, blk, *_ in self.parts)
        return f"MatMulNBits bits={self.bits} {blocks}"

    def forward(self, x: Tensor) -> Tensor:
        scales = self.scales()
        offsets = None if self.offsets is None else self.offsets()
        y = None
        for i, (k0, k1, blk, c0, cols, rep) in enumerate(self.parts):
            s = scales[:, c0:c0 + cols]
            if rep > 1:
                s = s.repeat_interleave(rep, dim=1)
            if offsets is None:
                zp = getattr(self, f"zero_points{i}")
            else:
                zp = offsets[:, c0:c0 + cols]
                zp = (zp.repeat_interleave(rep, dim=1) if rep > 1 else zp).reshape(-1)
            xi = x if (k0, k1) == (0, self.K) else x[..., k0:k1]
            yi = torch.ops.asrquant.matmul_nbits(
                xi, getattr(self, f"qweight{i}"), s.reshape(-1), zp, k1 - k0, self.N,
                self.bits, blk, self.accuracy_level)
            y = yi if y is None else y + yi
        return y if self.bias is None else y + self.bias


class DenseLinear(nn.Module):
    """x @ W^T + b with W float, or decoded in the graph from our codes (`GraphWeight`).
    A float W is stored transposed, (K, N), so that the graph has MatMul(x, initializer):
    the pattern onnxruntime's own weight quantizers (MatMulNBitsQuantizer) look for."""

    def __init__(self, weight: Tensor | GraphWeight, bias: Tensor | None):
        super().__init__()
        if isinstance(weight, GraphWeight):
            self.source = weight
        else:
            w = weight.detach().reshape(weight.shape[0], -1)
            self.register_buffer("weight_t", w.t().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        if "source" in self._modules:
            w = self.source()
            return F.linear(x, w.reshape(w.shape[0], -1), self.bias)
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


FALLBACKS = ("dequantize", "error")


class Lowering:
    """Builds each layer's graph form and records what it became (for docs and errors)."""

    def __init__(self, accuracy_level: int, fallback: str):
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback={fallback!r} is invalid; allowed: {list(FALLBACKS)}")
        self.accuracy_level, self.fallback = check_accuracy_level(accuracy_level), fallback
        self.table: dict[str, str] = {}
        self.float_zero_points = False  # any MatMulNBits node with float32 zero points

    def linear(self, name: str, module: nn.Module, attr: str = "weight",
               bias: Tensor | None = None) -> nn.Module:
        """Linear, pointwise Conv1d (kernel 1) or an MHA projection of `module`."""
        pw = module._modules.get(f"packed_{attr}")
        bias = getattr(module, "bias", None) if bias is None and attr == "weight" else bias
        if pw is None:
            self.table[name] = "MatMul (float32)"
            return DenseLinear(getattr(module, attr), bias)
        block = matmul_nbits_block(pw)
        if isinstance(block, int):
            linear = NBitsLinear(pw, bias, block, self.accuracy_level)
            self.float_zero_points |= linear.float_zero_points
            self.table[name] = f"{linear.describe()} ({pw.spec.describe()})"
            return linear
        if self.fallback == "error":
            raise OnnxExportError(f"layer {name!r} ({pw.spec.describe()}): MatMulNBits cannot "
                                  f"express {block}; export with fallback='dequantize' to "
                                  "decode it in the graph instead")
        self.table[name] = f"codes decoded in graph + MatMul: MatMulNBits cannot take {block}"
        return DenseLinear(GraphWeight(pw), bias)

    def conv_weight(self, name: str, module: nn.Module) -> nn.Module | Tensor:
        pw = module._modules.get("packed_weight")
        if pw is None:
            self.table[name] = f"{type(module).__name__.replace('Packed', '')} (float32)"
            return module.weight.detach().clone()
        self.table[name] = f"codes decoded in graph + Conv ({pw.spec.describe()})"
        return GraphWeight(pw)


def _weight(source: nn.Module | Tensor) -> Tensor:
    return source() if isinstance(source, nn.Module) else source


class GraphFeedForward(nn.Module):
    def __init__(self, name: str, ffn: nn.Module, low: Lowering):
        super().__init__()
        norm, up, _, _, down, _ = ffn.sequential
        self.norm = norm
        self.up = low.linear(f"{name}.sequential.1", up)
        self.down = low.linear(f"{name}.sequential.4", down)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.up(self.norm(x))))


class GraphConformerLayer(nn.Module):
    """`conformer_layer_forward` on (B, T, D), attention written out (SDPA with the key
    padding mask) so that its projections are MatMulNBits nodes."""

    def __init__(self, name: str, layer: nn.Module, low: Lowering):
        super().__init__()
        self.ffn1 = GraphFeedForward(f"{name}.ffn1", layer.ffn1, low)
        self.ffn2 = GraphFeedForward(f"{name}.ffn2", layer.ffn2, low)
        attn = layer.self_attn
        if attn.in_proj_weight is None or attn.bias_k is not None or not attn._qkv_same_embed_dim:
            raise OnnxExportError(f"{name}.self_attn: only packed q/k/v projections without "
                                  "bias_k/bias_v are exported")
        self.num_heads = attn.num_heads
        self.attn_norm = layer.self_attn_layer_norm
        self.in_proj = low.linear(f"{name}.self_attn.in_proj", attn, "in_proj_weight",
                                  attn.in_proj_bias)
        self.out_proj = low.linear(f"{name}.self_attn.out_proj", attn.out_proj)
        conv = layer.conv_module
        pw_in, _, depthwise, norm, _, pw_out, _ = conv.sequential
        if not isinstance(norm, nn.BatchNorm1d):
            raise OnnxExportError(f"{name}.conv_module: norm {type(norm).__name__} is not "
                                  "exported; BatchNorm1d only")
        self.conv_norm = conv.layer_norm
        self.pw_in = low.linear(f"{name}.conv_module.sequential.0", pw_in)
        self.dw_weight = low.conv_weight(f"{name}.conv_module.sequential.2", depthwise)
        self.register_buffer("dw_bias", None if depthwise.bias is None
                             else depthwise.bias.detach().clone())
        self.dw_padding, self.channels = depthwise.padding[0], depthwise.groups
        self.bn = norm
        self.pw_out = low.linear(f"{name}.conv_module.sequential.5", pw_out)
        self.final_norm = layer.final_layer_norm

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        batch, frames, dim = x.shape
        x = x + 0.5 * self.ffn1(x)

        q, k, v = self.in_proj(self.attn_norm(x)).chunk(3, dim=-1)
        heads = (batch, frames, self.num_heads, dim // self.num_heads)
        q, k, v = (t.reshape(heads).transpose(1, 2) for t in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
        x = x + self.out_proj(h.transpose(1, 2).reshape(batch, frames, dim))

        h = self.pw_in(self.conv_norm(x))
        h = F.glu(h, dim=-1).masked_fill(pad[:, :, None], 0.0).transpose(1, 2)
        h = F.conv1d(h, _weight(self.dw_weight), self.dw_bias, padding=self.dw_padding,
                     groups=self.channels)
        h = F.silu(F.batch_norm(h, self.bn.running_mean, self.bn.running_var, self.bn.weight,
                                self.bn.bias, False, 0.0, self.bn.eps))
        x = x + self.pw_out(h.transpose(1, 2))

        x = x + 0.5 * self.ffn2(x)
        return self.final_norm(x)


class OnnxGraph(nn.Module):
    """(B, S) float32 16 kHz audio, (B,) int64 lengths -> (B, T', V) CTC log-probs and (B,)
    output lengths, as `ConformerCTC.forward` in eval mode; T' follows the padded length
    (frames beyond a length are padding, as there)."""

    def __init__(self, model: ConformerCTC, accuracy_level: int = 0,
                 fallback: str = "dequantize"):
        super().__init__()
        low = Lowering(accuracy_level, fallback)
        # the DFT basis (2 x 201 x 400 floats) is computed in the graph, not stored: onnxruntime
        # folds it once when the session starts
        self.register_buffer("window", model.mel.spectrogram.window.detach().clone())
        self.register_buffer("mel_fb", model.mel.mel_scale.fb.detach().clone())  # (F, n_mels)
        self.register_buffer("feat_mean", model.feat_mean.detach().clone())
        self.register_buffer("feat_std", model.feat_std.detach().clone())
        low.table["front end"] = "Conv (windowed DFT basis) + MatMul (mel filterbank) + Log"
        sub = model.subsampling
        self.conv1 = low.conv_weight("subsampling.conv.0", sub.conv[0])
        self.conv2 = low.conv_weight("subsampling.conv.2", sub.conv[2])
        self.register_buffer("conv1_bias", sub.conv[0].bias.detach().clone())
        self.register_buffer("conv2_bias", sub.conv[2].bias.detach().clone())
        self.sub_out = low.linear("subsampling.out", sub.out)
        self.layers = nn.ModuleList(
            GraphConformerLayer(f"encoder.conformer_layers.{i}", layer, low)
            for i, layer in enumerate(model.encoder.conformer_layers))
        self.ctc_head = low.linear("ctc_head", model.ctc_head)
        self.lowering = dict(low.table)
        self.float_zero_points = low.float_zero_points

    def dft_basis(self) -> Tensor:
        """(2F, 1, N_FFT): windowed cos and -sin rows of the one-sided DFT, F = N_FFT/2 + 1;
        k*n is reduced mod N_FFT in integers first, so the float32 angles stay exact-ish."""
        k = torch.arange(N_FFT // 2 + 1)[:, None]
        n = torch.arange(N_FFT)[None, :]
        angle = ((k * n) % N_FFT).to(torch.float32) * (2 * math.pi / N_FFT)
        return torch.cat([torch.cos(angle) * self.window, -torch.sin(angle) * self.window]
                         ).unsqueeze(1)

    def forward(self, audio: Tensor, audio_lens: Tensor) -> tuple[Tensor, Tensor]:
        feat_lens = frame_lengths(audio_lens)
        spec = F.conv1d(audio.unsqueeze(1), self.dft_basis(), stride=HOP_LENGTH)  # (B, 2F, T)
        real, imag = spec.chunk(2, dim=1)
        power = (real * real + imag * imag).transpose(1, 2)  # (B, T, F)
        feats = torch.log(torch.matmul(power, self.mel_fb) + LOG_MEL_FLOOR)
        feats = (feats - self.feat_mean) / self.feat_std
        feats = feats.masked_fill(padding_mask(feat_lens, feats.shape[1])[:, :, None], 0.0)

        x = F.relu(F.conv2d(feats.unsqueeze(1), _weight(self.conv1), self.conv1_bias,
                            stride=2))
        x = F.relu(F.conv2d(x, _weight(self.conv2), self.conv2_bias, stride=2))
        batch, channels, frames, mels = x.shape
        x = self.sub_out(x.transpose(1, 2).reshape(batch, frames, channels * mels))
        lens = subsampled_lengths(feat_lens)
        pad = padding_mask(lens, frames)
        for layer in self.layers:
            x = layer(x, pad)
        return torch.log_softmax(self.ctc_head(x), dim=-1), lens
