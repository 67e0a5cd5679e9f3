"""Weight quantization math, recipes and size reports. Imports torch only."""

from .primitives import (
    GroupLayout,
    QuantizedTensor,
    choose_qparams,
    dequantize,
    fake_quantize,
    group_layout,
    quantize,
)
from .recipe import (
    CHECKPOINT_KEY,
    FakeQuantize,
    QuantRecipe,
    QuantRule,
    attach_fake_quant,
    build_report,
    candidate_weight_names,
    canonical_name,
    detach_fake_quant,
    fake_quant_specs,
    original_name,
    recipe_from_config,
    recipe_of_checkpoint,
)
from .report import ParamRow, QuantReport
from .spec import QuantSpec, code_range, num_levels

__all__ = [
    "CHECKPOINT_KEY",
    "FakeQuantize",
    "GroupLayout",
    "ParamRow",
    "QuantRecipe",
    "QuantReport",
    "QuantRule",
    "QuantSpec",
    "QuantizedTensor",
    "attach_fake_quant",
    "build_report",
    "candidate_weight_names",
    "canonical_name",
    "choose_qparams",
    "code_range",
    "dequantize",
    "detach_fake_quant",
    "fake_quant_specs",
    "fake_quantize",
    "group_layout",
    "num_levels",
    "original_name",
    "quantize",
    "recipe_from_config",
    "recipe_of_checkpoint",
]
