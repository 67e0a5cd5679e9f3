"""ONNX export: onnxruntime gives the packed torch model's log-probs (float rounding only) and
transcripts, with our own codes inside MatMulNBits; what the op cannot take is decoded in the
graph or refused naming the layer."""

import json
import math
import re
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from asrquant.data.tokenizer import CharTokenizer
from asrquant.export import export_packed, load_quantized
from asrquant.export.onnx import export_onnx, load_onnx, onnx_metadata, require
from asrquant.export.onnx_graph import (
    OnnxExportError,
    OnnxGraph,
    check_accuracy_level,
    matmul_nbits_block,
    pack_rows,
)
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import size_config
from asrquant.quant import QuantRecipe, QuantRule, QuantSpec
from asrquant.quant.pack import pack, unpack

RECIPES = {
    "float": QuantRecipe(None, name="float"),
    "int8": QuantRecipe(QuantSpec(bits=8), name="int8"),
    "int4_g128": QuantRecipe(QuantSpec(bits=4, group_size=128), name="int4_g128"),
    "int2_asym_g32": QuantRecipe(QuantSpec(bits=2, group_size=32), name="int2_asym_g32"),
    "int2_sym_g32": QuantRecipe(QuantSpec(bits=2, symmetric=True, group_size=32),
                                name="int2_sym_g32"),
    # every other lowering in one file: per-channel rows longer than one block, double-
    # quantized scales with packed zero points, 3 bits and group 48 (decoded in the graph)
    "mixed": QuantRecipe(
        QuantSpec(bits=2, group_size=32),
        rules=(QuantRule("*.self_attn.*", QuantSpec(bits=4, group_size=64)),
               QuantRule("*.ffn1.*", QuantSpec(bits=2, granularity="channel")),
               QuantRule("*.ffn2.sequential.1.*", QuantSpec(bits=2, group_size=32,
                                                            scale_bits=8,
                                                            zero_point_dtype="packed")),
               QuantRule("*.ffn2.sequential.4.*", QuantSpec(bits=3, group_size=48)),
               QuantRule("model.ctc_head.*", None)),
        name="mixed"),
}
AUDIO = torch.randn(3, 12000, generator=torch.Generator().manual_seed(1)) * 0.1
LENS = torch.tensor([12000, 9000, 4000])


@pytest.fixture(scope="module")
def ckpt():
    """One Conformer block (d_model 32, ffn 320 so that per-channel rows span two blocks):
    export time grows with the blocks, and one block has every kind of layer."""
    torch.manual_seed(0)
    tok = CharTokenizer()
    cfg = size_config("cpu", tok.vocab_size, d_model=32, num_layers=1, ffn_dim=320,
                      subsampling_channels=8, conv_kernel_size=7)
    module = ASRModule(cfg, tok)
    for m in module.modules():  # BatchNorm statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return {"state_dict": module.state_dict(), "model_config": cfg.to_dict(),
            "tokenizer_state": tok.to_state()}


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    """name -> (packed safetensors path, onnx export info) for every recipe."""
    out = {}
    for name, recipe in RECIPES.items():
        folder = tmp_path_factory.mktemp(name)
        export_packed(ckpt, recipe, folder / "model.safetensors")
        out[name] = (folder / "model.safetensors",
                     export_onnx(folder / "model.safetensors", folder / "model.onnx"))
    return out


def valid_max_diff(a, b, lens):
    return max(float((a[i, :n] - b[i, :n]).abs().max()) for i, n in enumerate(lens.tolist()))


@pytest.mark.parametrize("name", RECIPES)
def test_onnxruntime_gives_the_packed_models_log_probs_and_transcripts(exported, name):
    packed_path, info = exported[name]
    packed = load_quantized(packed_path)
    deployed = load_onnx(info["path"], threads=1)
    with torch.no_grad():
        ref, ref_lens = packed.model(AUDIO, LENS)
        out, out_lens = deployed.model(AUDIO, LENS)
    assert torch.equal(out_lens, ref_lens)
    assert valid_max_diff(out, ref, ref_lens) <= 1e-4
    waves = [AUDIO[i, :n] for i, n in enumerate(LENS.tolist())]
    assert deployed.transcribe(waves) == packed.transcribe(waves)


def test_quantized_linears_become_matmul_nbits_and_the_rest_is_said(exported):
    lowering = json_lowering(exported["int2_asym_g32"][1]["path"])
    linears = [k for k in lowering if k != "front end" and "conv.0" not in k
               and "conv.2" not in k and "sequential.2" not in k]
    assert linears and all(re.fullmatch(r"MatMulNBits bits=2 K=\d+ block_size=32( \+ K=\d+ "
                                        r"block_size=\d+)? \(int2 asym g32\)", lowering[k])
                           for k in linears), lowering
    assert lowering["encoder.conformer_layers.0.conv_module.sequential.2"].startswith(
        "codes decoded in graph + Conv")
    mixed = json_lowering(exported["mixed"][1]["path"])
    assert mixed["encoder.conformer_layers.0.ffn2.sequential.4"].startswith(
        "codes decoded in graph + MatMul")  # 3 bits
    assert mixed["encoder.conformer_layers.0.ffn1.sequential.1"].startswith(
        "MatMulNBits bits=2 K=32 block_size=32 (")  # per channel, K=32: one block
    # per channel, K=320: a block of 256 and a tail node of 64, no padding in the file
    assert mixed["encoder.conformer_layers.0.ffn1.sequential.4"].startswith(
        "MatMulNBits bits=2 K=256 block_size=256 + K=64 block_size=64 (")
    assert mixed["ctc_head"] == "MatMul (float32)"


def json_lowering(path):
    return json.loads(onnx_metadata(path)["lowering"])


def test_matmul_nbits_holds_our_codes_without_requantizing(exported):
    """The integers in the ONNX initializer are the safetensors file's codes."""
    packed_path, info = exported["int2_asym_g32"]
    module = load_quantized(packed_path)
    pw = module.model.encoder.conformer_layers[0].ffn2.sequential[4].packed_weight
    ours = unpack(pw.packed, 2, pw.shape.numel()).reshape(pw.shape)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(info["path"]).graph.initializer}
    (key,) = [k for k in inits if k.endswith("ffn2.down.qweight0")]
    blob = torch.from_numpy(inits[key].copy())  # (N, n_blocks, 8): 32 codes of 2 bits each
    theirs = unpack(blob.reshape(-1), 2, blob.numel() * 4).reshape(pw.shape[0], -1)
    assert torch.equal(theirs[:, : pw.shape[1]], ours)


def test_file_size_is_within_five_percent_of_the_safetensors_file(exported):
    for name in ("int8", "int4_g128", "int2_asym_g32", "int2_sym_g32"):
        info = exported[name][1]
        assert info["file_bytes"] <= 1.05 * info["source_bytes"], name


def test_decoding_codes_in_the_graph_is_exact_for_every_bit_width(tmp_path):
    """unpack_codes' ONNX ops (BitShift/BitwiseAnd, uint64 words for 3/5/6/7 bits) against
    our unpack, for 1..8 bits and a count that leaves a partial chunk."""
    from asrquant.export.onnx_graph import pad_to_chunks, unpack_graph
    from asrquant.quant.pack import pack

    gen = torch.Generator().manual_seed(0)
    codes = {b: torch.randint(0, 2**b, (101,), generator=gen, dtype=torch.uint8)
             for b in range(1, 9)}

    class Unpacks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for b, c in codes.items():
                self.register_buffer(f"p{b}", pad_to_chunks(pack(c, b), b))

        def forward(self, x):
            return tuple(unpack_graph(getattr(self, f"p{b}"), b, 101).to(torch.float32) + x
                         for b in codes)

    from asrquant.export.onnx_graph import onnx_translation_table

    program = torch.onnx.export(Unpacks().eval(), (torch.zeros(1),), dynamo=True, optimize=False,
                                custom_translation_table=onnx_translation_table())
    proto = program.model_proto
    proto.ir_version = 10
    ort = require("onnxruntime")
    outs = ort.InferenceSession(proto.SerializeToString()).run(None, {proto.graph.input[0].name:
                                                                      np.zeros(1, np.float32)})
    for (b, c), got in zip(codes.items(), outs, strict=True):
        assert np.array_equal(got.astype(np.uint8), c.numpy()), f"{b} bits"


def test_a_recipe_the_op_cannot_take_is_refused_naming_the_layer(ckpt, tmp_path):
    path = tmp_path / "int3.safetensors"
    export_packed(ckpt, QuantRecipe(QuantSpec(bits=3, group_size=64)), path)
    with pytest.raises(OnnxExportError, match=r"subsampling\.out.*3 bits.*\[2, 4, 8\]"):
        export_onnx(path, tmp_path / "int3.onnx", fallback="error")
    assert not (tmp_path / "int3.onnx").exists()


def test_block_sizes_follow_what_matmul_nbits_accepts(ckpt, tmp_path):
    cases = {QuantSpec(bits=4, group_size=48): "group size 48",
             QuantSpec(bits=4, group_size=512): 256,  # rows of 320: one group, blocks of 256
             QuantSpec(bits=4, group_size=16): 16,
             QuantSpec(bits=4, granularity="tensor"): "granularity 'tensor'"}
    for spec, want in cases.items():
        path = tmp_path / f"{spec.name()}.safetensors"
        export_packed(ckpt, QuantRecipe(QuantSpec(bits=2), rules=(
            QuantRule("*.ffn1.sequential.4.*", spec),)), path)
        pw = load_quantized(path).model.encoder.conformer_layers[0].ffn1.sequential[4]
        got = matmul_nbits_block(pw.packed_weight)
        assert got == want if isinstance(want, int) else want in got, (spec, got)
        assert math.log2(got).is_integer() if isinstance(got, int) else True


def test_graph_in_torch_equals_the_packed_model_before_any_onnx(exported):
    """OnnxGraph eagerly (reference ops) vs the packed model: the graph's maths, apart from
    onnxruntime's kernels."""
    module = load_quantized(exported["mixed"][0])
    with torch.no_grad():
        ref, lens = module.model(AUDIO, LENS)
        out, out_lens = OnnxGraph(module.model).eval()(AUDIO, LENS)
    assert torch.equal(out_lens, lens)
    assert valid_max_diff(out, ref, lens) <= 1e-5


def test_missing_extra_says_which_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"'onnxruntime'.*pip install 'asrquant\[onnx\]'"):
        require("onnxruntime")


def test_a_file_that_is_not_ours_is_refused(tmp_path):
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.save(model, tmp_path / "foreign.onnx")
    with pytest.raises(ValueError, match="format None is not 'asrquant.onnx'"):
        load_onnx(tmp_path / "foreign.onnx")


def test_level_4_export_holds_uint8_zero_points_and_stays_close(exported, tmp_path):
    """accuracy_level 4 (int8 activations) needs uint8 zero points: exported as such; a level
    0 file (float32 zero points) refuses level 4 rather than silently running float32."""
    packed_path, info = exported["int2_asym_g32"]
    path = tmp_path / "l4.onnx"
    export_onnx(packed_path, path, accuracy_level=4)
    meta = onnx_metadata(path)
    assert (meta["accuracy_level"], meta["zero_points"]) == ("4", "uint8")
    assert onnx_metadata(info["path"])["zero_points"] == "float32"
    nodes = [n for n in onnx.load(path).graph.node if n.op_type == "MatMulNBits"]
    inits = {i.name: i for i in onnx.load(path).graph.initializer}
    assert nodes and all(inits[n.input[3]].data_type == onnx.TensorProto.UINT8 for n in nodes)
    packed = load_quantized(packed_path)
    with torch.no_grad():
        ref, lens = packed.model(AUDIO, LENS)
        out, _ = load_onnx(path, threads=1).model(AUDIO, LENS)
    assert 0 < valid_max_diff(out, ref, lens) < 0.05  # int8 activations: close, not exact
    with pytest.raises(ValueError, match="exported for accuracy_level 0, with float32 zero"):
        load_onnx(info["path"], accuracy_level=4)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [1, 5, 16, 33])
def test_pack_rows_packs_each_row_alone(bits, n):
    """MatMulNBits wants every row (weight row, zero-point row) to start on a byte: the
    one-call packing of padded rows equals packing row by row, for rows that do not fill
    their last byte too."""
    codes = torch.randint(0, 2**bits, (7, n), generator=torch.Generator().manual_seed(n))
    assert torch.equal(pack_rows(codes, bits), torch.stack([pack(r, bits) for r in codes]))


@pytest.mark.parametrize("level", [-1, 5, 1.5, True, "4"])
def test_accuracy_level_is_checked_by_one_rule(level):
    with pytest.raises(ValueError, match=r"accuracy_level=.* is invalid; allowed: 0, 1, 2, 3, 4"):
        check_accuracy_level(level)
    assert check_accuracy_level(None, null="as exported") is None
