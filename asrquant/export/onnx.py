"""ONNX export for onnxruntime, and running the exported file as a recognizer.

`export_onnx(model_file, out)` writes the whole recognizer (log-mel front end, subsampling,
every Conformer block, CTC head) of a float or packed safetensors file as one .onnx file:
input padded 16 kHz waveforms `audio` (B, S) float32 and `audio_lens` (B,) int64; output
`log_probs` (B, T', V) and `out_lens` (B,); batch and time axes dynamic. Quantized Linears
become `com.microsoft::MatMulNBits` nodes over our codes (see `onnx_graph` for what each layer
becomes). Metadata (`metadata_props`): format, model_config, tokenizer_state, recipe and the
per-layer lowering, so the file alone is enough to transcribe.

`load_onnx(path)` gives an `ASRModule` whose `model` runs the file in an onnxruntime session:
`asrquant-eval onnx=...`, `transcribe` and the Lightning test loop work on it unchanged.

onnx, onnxscript and onnxruntime come with the optional extra `asrquant[onnx]`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import warnings
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from asrquant.data.tokenizer import tokenizer_from_state
from asrquant.export.onnx_graph import OnnxGraph, check_accuracy_level, onnx_translation_table
from asrquant.export.packed import ExportError, load_quantized
from asrquant.io import atomic_path
from asrquant.lightning.module import ASRModule
from asrquant.models.conformer_ctc import MIN_AUDIO_SAMPLES, ConformerCTCConfig

ONNX_FORMAT = "asrquant.onnx"
ONNX_FORMAT_VERSION = "1"
IR_VERSION = 10  # onnxruntime >= 1.17 reads it
OPSET = 20
EXTRA = "pip install 'asrquant[onnx]'"
INPUTS, OUTPUTS = ("audio", "audio_lens"), ("log_probs", "out_lens")


def require(name: str):
    """Import an optional dependency of the ONNX path, or say in one line how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"ONNX export and inference need {name!r}, which is not installed: "
                          f"{EXTRA}") from None


def export_onnx(model_file: str | os.PathLike, out: str | os.PathLike,
                accuracy_level: int = 0, fallback: str = "dequantize") -> dict:
    """Write the float or packed safetensors `model_file` (asrquant-export) as one ONNX file
    at `out` (atomically). accuracy_level: MatMulNBits compute (0: float32, exact up to float
    rounding; 4: int8 activations, fastest). fallback: a quantized Linear that MatMulNBits
    cannot express (3 bits, a group size that is not a power of two in [16, 256]) is decoded
    in the graph ("dequantize", exact, small file) or refused ("error")."""
    require("onnx")
    require("onnxscript")
    module = load_quantized(model_file)
    with safe_open(str(model_file), "pt") as f:
        meta = f.metadata() or {}
    graph = OnnxGraph(module.model, accuracy_level=accuracy_level, fallback=fallback).eval()
    proto = _export_proto(graph)
    proto.ir_version = IR_VERSION
    info = {"format": ONNX_FORMAT, "format_version": ONNX_FORMAT_VERSION,
            "model_config": meta["model_config"], "tokenizer_state": meta["tokenizer_state"],
            "recipe": meta["recipe"], "lowering": json.dumps(graph.lowering),
            "accuracy_level": str(accuracy_level),
            "zero_points": "float32" if graph.float_zero_points else "uint8",
            "source": Path(model_file).name}
    del proto.metadata_props[:]
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(out) as tmp:
        require("onnx").save_model(proto, str(tmp))
    kinds = Counter(v.split(" ")[0] for v in graph.lowering.values())
    return {"path": str(out), "file_bytes": Path(out).stat().st_size,
            "source_bytes": Path(model_file).stat().st_size,
            "matmul_nbits_nodes": sum(1 for n in proto.graph.node if n.op_type == "MatMulNBits"),
            "lowering": dict(kinds), "accuracy_level": accuracy_level}


def _export_proto(graph: OnnxGraph):
    """torch.onnx (dynamo) export with our two custom ops translated, then cleaned: CastLike
    turned into Cast (the exporter knows every type), node metadata and value_info dropped,
    and only tiny constants folded (the codes must stay codes: onnxruntime folds the decoding
    subgraphs when a session starts, not the file)."""
    optimizer = require("onnxscript").optimizer
    audio = torch.zeros(2, MIN_AUDIO_SAMPLES * 12)
    lens = torch.tensor([audio.shape[1], MIN_AUDIO_SAMPLES * 8])
    batch = torch.export.Dim("batch")
    samples = torch.export.Dim("samples", min=MIN_AUDIO_SAMPLES)
    with _quiet_exporter():
        program = torch.onnx.export(
            graph, (audio, lens), dynamo=True, opset_version=OPSET, optimize=False,
            dynamic_shapes=({0: batch, 1: samples}, {0: batch}),
            custom_translation_table=onnx_translation_table(),
            input_names=list(INPUTS), output_names=list(OUTPUTS), verbose=False)
    dtypes = {v.name: v.dtype for node in program.model.graph.all_nodes() for v in node.outputs
              if v.dtype is not None}
    dtypes.update({v.name: v.dtype for v in program.model.graph.inputs})
    dtypes.update({name: v.dtype for name, v in program.model.graph.initializers.items()})
    proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        if node.op_type == "CastLike" and node.input[1] in dtypes:
            target = int(dtypes[node.input[1]])
            node.op_type = "Cast"
            del node.input[1]
            node.attribute.add().CopyFrom(require("onnx").helper.make_attribute("to", target))
    with _quiet_exporter():
        proto = optimizer.optimize(proto, input_size_limit=16, output_size_limit=16)
    _compact(proto)
    return proto


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress lines and its libraries' INFO logs (one line per folded
    constant) would bury a run's own output: kept to warnings for the duration."""
    names = ("torch.onnx", "onnxscript", "onnx_ir")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def _compact(proto) -> None:
    """Drop what only debugging needs (node names and metadata, value_info, doc strings) and
    give the intermediate values short names: at the CPU size the graph's own bytes would
    otherwise be ~10% of a 2-bit file."""
    graph = proto.graph
    del graph.value_info[:]
    del graph.metadata_props[:]
    proto.doc_string = graph.doc_string = ""
    keep = {v.name for v in (*graph.input, *graph.output)} | {i.name for i in graph.initializer}
    names: dict[str, str] = {}
    initializers = {i.name for i in graph.initializer}
    for node in graph.node:
        # a MatMul on a weight is named after it ("layers.0.ffn1.up.weight_t"), so that tools
        # can pick nodes (e.g. MatMulNBitsQuantizer's nodes_to_exclude=["mel_fb"])
        weights = [i for i in node.input if i in initializers]
        node.name = weights[0] if node.op_type in ("MatMul", "MatMulNBits") and weights else ""
        node.doc_string = ""
        del node.metadata_props[:]
        for i, name in enumerate(node.input):
            if name in names:
                node.input[i] = names[name]
        for i, name in enumerate(node.output):
            if name and name not in keep:
                names[name] = node.output[i] = f"t{len(names):x}"


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


class OnnxRuntimeCTC(nn.Module):
    """`ConformerCTC.forward` served by an onnxruntime session of an exported file: (B, S)
    audio, (B,) lengths -> (B, T', V) log-probs, (B,) lengths, as torch tensors on the CPU."""

    def __init__(self, path: str | os.PathLike, config: ConformerCTCConfig, threads: int = 2,
                 accuracy_level: int | None = None):
        super().__init__()
        ort = require("onnxruntime")
        onnx = require("onnx")
        model = onnx.load(str(path))
        if accuracy_level is not None:
            set_accuracy_level(model, accuracy_level)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.config = config
        self.path = str(path)

    def forward(self, audio: Tensor, audio_lens: Tensor) -> tuple[Tensor, Tensor]:
        feeds = {"audio": audio.detach().to("cpu", torch.float32).contiguous().numpy(),
                 "audio_lens": audio_lens.detach().to("cpu", torch.int64).numpy()}
        log_probs, out_lens = self.session.run(list(OUTPUTS), feeds)
        return torch.from_numpy(log_probs), torch.from_numpy(out_lens)


def set_accuracy_level(model, level: int) -> int:
    """Set every MatMulNBits node's accuracy_level in an ONNX ModelProto; returns how many.

    Our files exported for level 0 hold float32 zero points (onnxruntime's exact float path;
    8-bit layers excepted): such a file stays at level 0, and another level means exporting
    again; files exported for levels 1-4 (packed uint8 zero points) take any level."""
    check_accuracy_level(level)
    meta = {p.key: p.value for p in model.metadata_props}
    exported = meta.get("accuracy_level")
    if meta.get("zero_points") == "float32" and level != 0:
        raise ValueError(
            f"accuracy_level={level} is invalid for this file: it was exported for "
            f"accuracy_level {exported}, with float32 zero points (onnxruntime's exact float "
            f"path); allowed: 0, or export it again with onnx.accuracy_level={level}")
    count = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = [a for a in node.attribute if a.name == "accuracy_level"]
            if attrs:
                attrs[0].i = level
            else:
                node.attribute.add().CopyFrom(
                    require("onnx").helper.make_attribute("accuracy_level", level))
            count += 1
    return count


def load_onnx(path: str | os.PathLike, threads: int = 2,
              accuracy_level: int | None = None) -> ASRModule:
    """An eval-mode ASRModule whose model is the exported ONNX file in onnxruntime (tokenizer
    and config from the file's metadata). accuracy_level: override the file's MatMulNBits
    accuracy_level (None: as exported)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist")
    meta = onnx_metadata(path)
    if meta.get("format") != ONNX_FORMAT:
        raise ExportError(f"{path}: metadata format {meta.get('format')!r} is not "
                          f"{ONNX_FORMAT!r} (export it with asrquant-export format=onnx)")
    config = json.loads(meta["model_config"])
    tokenizer = tokenizer_from_state(json.loads(meta["tokenizer_state"]))
    with torch.device("meta"):  # the torch weights are never needed
        module = ASRModule(config, tokenizer)
    module.model = OnnxRuntimeCTC(path, ConformerCTCConfig.from_dict(config), threads,
                                  accuracy_level)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()]]
    if left:
        raise ExportError(f"{path}: the ONNX module still holds torch tensors {left[:3]}")
    return module.to("cpu").eval()
