"""asrquant-search end to end on a tiny model and corpus: sensitivity, allocation within the
budget, the written recipe loads (recipe_from_config, and as quant=<name>) and evaluates at
the predicted size; the cache spares a rerun; bad input fails before any work."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from asrquant.data.synthetic import build_synthetic_corpus
from asrquant.data.tokenizer import CharTokenizer
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import size_config
from asrquant.quant import candidate_weight_names, recipe_from_config
from asrquant.quant.allocate import BudgetError
from asrquant.runs import run_eval
from asrquant.runs.blocks import fit_normalizer
from asrquant.runs.search import (
    base_spec,
    candidate_specs,
    layer_groups,
    load_float_module,
    recipe_of_choice,
    recipe_yaml,
    run_search,
    validate_search_config,
)

CORPUS = {"n_train": 4, "n_dev": 6, "n_test": 2, "n_test_voices": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dims):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("corpus")
    data = [f"data.synthetic.cache_dir={cache}", "threads=1",
            *(f"data.synthetic.{k}={v}" for k, v in CORPUS.items())]
    paths = build_synthetic_corpus(cache, **CORPUS, progress=False)
    tok = CharTokenizer()
    module = ASRModule(size_config("cpu", tok.vocab_size, **tiny_dims), tok)
    fit_normalizer(module, paths["train"], 4, 0)
    ckpt = tmp_path_factory.mktemp("model") / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "model_config": module.model.config.to_dict(),
                "tokenizer_state": tok.to_state()}, ckpt)
    return ckpt, data, tmp_path_factory.mktemp("search_cache")


@pytest.fixture(scope="module")
def search_cfg(setup, cfg_of):
    """search_cfg(*overrides): asrquant-search's config on the tiny model and corpus."""
    ckpt, data, cache = setup

    def make(*extra):
        return cfg_of("search", [f"ckpt={ckpt}", f"cache_dir={cache}", "progress=false",
                                 *data, *extra])
    return make


def test_layer_groups_cover_every_candidate_once(setup):
    module = load_float_module(setup[0])
    groups = layer_groups(module)
    assert [g.name for g in groups] == ["subsampling", "layers.0.ffn1", "layers.0.self_attn",
                                        "layers.0.conv_module", "layers.0.ffn2", "ctc_head"]
    held = [p for g in groups for p in g.params]
    assert sorted(held) == sorted(candidate_weight_names(module))
    assert groups[2].pattern == "model.encoder.conformer_layers.0.self_attn.*"


def test_search_end_to_end(setup, search_cfg, cfg_of, tmp_path):
    ckpt, data, _ = setup
    out = tmp_path / "conf" / "quant" / "tiny_mixed.yaml"
    res = run_search(search_cfg("budget_bpw=3.6", "name=tiny_mixed", f"out={out}"),
                     tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "search.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["measured_now"] == 6 * 4
    chosen = on_disk["chosen"]
    assert chosen["size_bytes"] <= on_disk["budget"]["bytes"]
    assert chosen["effective_bits"] <= 3.6
    assert set(chosen["bits"].values()) <= {2, 3, 4, 8}
    assert len(set(chosen["bits"].values())) > 1  # 3.6 bits: more than uniform 2 (3.0 bits)
    # uniform 2-bit fits this budget, so the optimum predicts no larger change
    u2 = next(c for c in on_disk["comparisons"] if c["candidate"] == "2")
    assert u2["uniform"]["size_bytes"] <= on_disk["budget"]["bytes"]
    assert chosen["predicted_change"] <= u2["uniform"]["predicted_change"] + 1e-12
    for c in on_disk["comparisons"]:  # equal size: never larger than the uniform recipe
        assert c["mixed_same_size"]["size_bytes"] <= c["uniform"]["size_bytes"]
        assert "dev" in c["uniform"] and "dev" in c["mixed_same_size"]
    assert not list((tmp_path / "run").glob(".*.tmp"))

    # The YAML loads through recipe_from_config and quantizes each group at its chosen bits.
    text = out.read_text()
    assert text == (tmp_path / "run" / "tiny_mixed.yaml").read_text()
    recipe = recipe_from_config(yaml.safe_load(text))
    module = load_float_module(ckpt)
    plan = recipe.plan(module)
    for g in layer_groups(module):
        assert {plan[p].bits for p in g.params} == {chosen["bits"][g.name]}
        assert all(plan[p].group_size == 32 and not plan[p].symmetric for p in g.params)

    # ... and asrquant-eval takes it as quant=<name> from a conf folder on the search path.
    cfg = cfg_of("eval", [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "quant=tiny_mixed",
                          f"ckpt={ckpt}", "trainer.enable_progress_bar=false", *data])
    ev = run_eval(cfg, tmp_path / "eval")
    assert ev["status"] == "ok" and ev["mode"] == "ptq"
    assert ev["size_bytes"] == chosen["size_bytes"] <= on_disk["budget"]["bytes"]

    # Another budget reuses every measurement; a larger one never predicts a larger change.
    again = run_search(search_cfg("budget_bpw=5.5", "name=tiny_b", "verify=false"),
                       tmp_path / "run2")
    assert again["measured_now"] == 0 and again["groups"] == res["groups"]
    assert again["chosen"]["predicted_change"] <= chosen["predicted_change"] + 1e-12
    assert "dev" not in again["chosen"]
    # A new candidate (2 bits in groups of 128) measures only that one.
    more = run_search(search_cfg("budget_bpw=3.0", "candidates=[2,3,4,8,2g128]",
                                 "verify=false"), tmp_path / "run3")
    assert more["measured_now"] == 6
    assert more["min_bytes"] < on_disk["min_bytes"]  # 2g128 is smaller than 2 bits in g32
    assert more["chosen"]["size_bytes"] <= more["budget"]["bytes"]


def test_recipes_with_group_size_candidates_round_trip_through_yaml(setup, search_cfg):
    cfg = validate_search_config(search_cfg("budget_mb=1"))
    module = load_float_module(setup[0])
    groups = layer_groups(module)
    options = candidate_specs([2, 4, "3g128", "8ch"], base_spec(cfg))
    choice = {g.name: "2" for g in groups}
    choice.update({"layers.0.ffn1": "3g128", "ctc_head": "8ch", "subsampling": "4"})
    recipe = recipe_of_choice(options, groups, choice, "rt")
    doc = yaml.safe_load(recipe_yaml(cfg, recipe, groups, ["a comment"]))
    assert doc["rules"] == [
        {"pattern": "model.subsampling.*", "bits": 4},
        {"pattern": "model.encoder.conformer_layers.0.ffn1.*", "bits": 3, "group_size": 128},
        {"pattern": "model.ctc_head.*", "bits": 8, "granularity": "channel", "group_size": None},
    ]
    assert recipe_from_config(doc).plan(module) == recipe.plan(module)


@pytest.mark.parametrize("extra, needle", [
    ([], "exactly one of budget_mb"),
    (["budget_mb=1", "budget_bpw=3"], "exactly one of budget_mb"),
    (["budget_mb=0"], "budget_mb=0 is invalid; allowed: a number > 0"),
    (["budget_bpw=-3"], "budget_bpw=-3 is invalid"),
    (["budget_mb=1", "candidates=[2,16]"], r"candidates=\[2, 16\] is invalid \(QuantSpec.bits=16"
                                           r".*allowed: a non-empty list of distinct bit widths "
                                           r"in 1..8"),
    (["budget_mb=1", "candidates=[2,2]"], r"candidates=\[2, 2\] is invalid \(candidate 2 is "
                                          "repeated"),
    (["budget_mb=1", "candidates=[]"], r"candidates=\[\] is invalid"),
    (["budget_mb=1", "candidates=[2,2x]"], r"candidate '2x' is invalid; allowed: bits \(e.g. 3\)"),
    (["budget_mb=1", "metric=mse"], r"metric='mse' is invalid; allowed: \['loss', 'wer'\]"),
    (["budget_mb=1", "name=a/b"], "name='a/b' is invalid"),
    (["budget_mb=1", "quant=mixed_attn4_rest2"], "must be a plain spec"),
    (["budget_mb=1", "quant=int2_sym_g32", "candidates=[1,2]"], r"QuantSpec.bits=1"),
    (["budget_mb=1", "candidates=[2,2g0]"], r"QuantSpec.group_size=0"),
])
def test_bad_input_is_refused_before_any_work(search_cfg, extra, needle):
    with pytest.raises(ValueError, match=needle):
        validate_search_config(search_cfg(*extra))


def test_a_budget_below_the_smallest_recipe_fails_before_measuring(search_cfg, tmp_path):
    with pytest.raises(BudgetError, match=r"budget 1,000 bytes \(0.001000 MB\) is below the "
                                          r"smallest size these candidates reach, [\d,]+ bytes"):
        run_search(search_cfg("budget_mb=0.001", f"cache_dir={tmp_path / 'c'}"),
                   tmp_path / "run")
    assert not (tmp_path / "c").exists()


def test_the_command_line_entry_point_records_a_failure(setup, tmp_path):
    ckpt, data, _ = setup
    proc = subprocess.run([sys.executable, "-m", "asrquant.cli.search", f"ckpt={ckpt}",
                           f"hydra.run.dir={tmp_path}", *data],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    failed = json.loads((tmp_path / "results.json").read_text())
    assert failed["status"] == "failed" and "exactly one of budget_mb" in failed["error"]
