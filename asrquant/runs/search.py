"""Mixed-precision search: per-layer-group sensitivity on the dev split, then the cheapest
bit allocation under a size budget (asrquant.quant.allocate), written as a conf/quant recipe.

    asrquant-search ckpt=best.ckpt budget_mb=0.9              # see docs/search.md

Steps:
1. Layer groups (`layer_groups`): the candidate weights split by module: the subsampling
   front, each Conformer block's ffn1, self_attn, conv_module and ffn2, and the CTC head;
   each group is one glob pattern, so the chosen bits become one recipe rule per group.
2. Sizes: for each group and candidate bit width, the bytes `build_report` counts for it
   (codes, scales and zero points, exactly what export writes); everything else is fixed.
3. Sensitivity (`measure_sensitivity`): the dev CTC loss and dev WER when only that group is
   quantized to that bit width (all else float), minus the float model's. Measured on the dev
   split only (never test), cached in a JSON file so a new budget costs no new measurement.
4. Allocation: the bits per group with the least summed sensitivity whose total size fits the
   budget (additivity assumption: the change of a combination is the sum of its groups').
5. The chosen recipe, the uniform recipes and the mixed recipe at each uniform recipe's size
   are measured on the same dev utterances (`verify`) to show what additivity predicted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from asrquant.checks import check_choice, check_number
from asrquant.data.datamodule import ASRDataModule
from asrquant.data.readers import read_utterances
from asrquant.data.text import normalize_text
from asrquant.export import load_quantized
from asrquant.io import atomic_write_json, atomic_write_text, cache_dir, model_path
from asrquant.lightning.metrics import corpus_wer
from asrquant.lightning.module import ASRModule
from asrquant.models.decoding import greedy_ctc_decode
from asrquant.quant import (
    QuantRecipe,
    QuantRule,
    QuantSpec,
    attach_fake_quant,
    build_report,
    candidate_weight_names,
    detach_fake_quant,
    fake_quant_specs,
    recipe_from_config,
)
from asrquant.quant.allocate import (
    MB,
    Allocation,
    GroupOptions,
    allocate,
    budget_bytes_from,
    check_budget,
    min_total_bytes,
)
from asrquant.quant.spec import MAX_BITS, MIN_BITS
from asrquant.runs.blocks import data_sources, load_checkpoint, module_from_checkpoint
from asrquant.runs.common import (
    check_files,
    check_threads,
    finish_run,
    plain,
    require_ckpt,
    start_run,
)

METRICS = ("loss", "wer")
CACHE_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------------- groups

@dataclass(frozen=True)
class LayerGroup:
    name: str  # e.g. "layers.0.ffn1"
    pattern: str  # glob over full parameter names, e.g. "model.encoder.conformer_layers.0.ffn1.*"
    params: tuple[str, ...]  # the candidate weights it holds


def _group_prefix(name: str) -> list[str]:
    parts = name.split(".")
    if "conformer_layers" in parts:  # <...>.conformer_layers.<i>.<ffn1|self_attn|...>
        i = parts.index("conformer_layers")
        return parts[: min(i + 3, len(parts) - 1)]
    return parts[: min(2, len(parts) - 1)]  # model.subsampling, model.ctc_head


def layer_groups(model: torch.nn.Module) -> list[LayerGroup]:
    """The candidate weights of `model` grouped by module, in model order, each with a glob
    that matches exactly its own candidates."""
    names = candidate_weight_names(model)
    by_prefix: dict[str, list[str]] = {}
    for n in names:
        by_prefix.setdefault(".".join(_group_prefix(n)), []).append(n)
    groups = []
    for prefix, params in by_prefix.items():
        short = prefix.removeprefix("model.").replace("encoder.conformer_layers.", "layers.")
        group = LayerGroup(short or prefix, f"{prefix}.*", tuple(params))
        rule = QuantRule(group.pattern, None)
        if any(c in prefix for c in "*?[]") or \
                [n for n in names if rule.matches(n)] != list(params):
            raise ValueError(f"layer group {group.name!r}: pattern {group.pattern!r} does not "
                             "match exactly its own parameters")
        groups.append(group)
    return groups


def group_sizes(model: torch.nn.Module, groups: Sequence[LayerGroup],
                options: dict[str, QuantSpec]) -> tuple[dict[str, dict[str, int]], int, int]:
    """Bytes of each group at each candidate bit width (as build_report and export count
    them), the bytes of everything else (kept at its own dtype), and the searched weights."""
    float_rows = {r.name: r for r in build_report(model, {}).rows}
    searched = {p for g in groups for p in g.params}
    fixed = sum(r.bytes for n, r in float_rows.items() if n not in searched)
    sizes = {}
    for g in groups:
        sizes[g.name] = {}
        for label, spec in options.items():
            report = build_report(model, {p: spec for p in g.params})
            sizes[g.name][label] = sum(r.bytes for r in report.rows if r.name in g.params)
    num_weights = sum(float_rows[p].numel for p in searched)
    return sizes, fixed, num_weights


_CANDIDATE = re.compile(r"^([0-9]+)(?:g([0-9]+)|(ch))?$")


def candidate_specs(candidates: Sequence[int | str], base: QuantSpec) -> dict[str, QuantSpec]:
    """Label -> spec of each candidate: an int b is `base` at b bits; "2g128" is 2 bits in
    groups of 128; "4ch" is 4 bits per channel (other fields from `base`)."""
    out = {}
    for c in candidates:
        m = None if isinstance(c, bool) else _CANDIDATE.match(str(c))
        if m is None:
            raise ValueError(f"candidate {c!r} is invalid; allowed: bits (e.g. 3), bits in "
                             "groups of N (e.g. '2g128') or bits per channel (e.g. '4ch')")
        fields = {**base.to_dict(), "bits": int(m[1])}
        if m[2]:
            fields.update(granularity="group", group_size=int(m[2]))
        elif m[3]:
            fields.update(granularity="channel", group_size=None)
        label = str(c)
        if label in out:
            raise ValueError(f"candidate {c!r} is repeated")
        out[label] = QuantSpec.from_dict(fields)
    if not out:
        raise ValueError("candidates is empty")
    return out


def recipe_of_choice(options: dict[str, QuantSpec], groups: Sequence[LayerGroup],
                     choice: dict[str, str], name: str) -> QuantRecipe:
    """Default = the most common choice; one rule per group that differs."""
    default = Counter(choice[g.name] for g in groups).most_common(1)[0][0]
    rules = [QuantRule(g.pattern, options[choice[g.name]]) for g in groups
             if choice[g.name] != default]
    return QuantRecipe(options[default], tuple(rules), name)


# ------------------------------------------------------------------------------- scoring

class DevScorer:
    """Dev CTC loss (per reference token, averaged over utterances: ASRModule's val/loss)
    and corpus WER of a module on fixed dev batches, read from disk once."""

    def __init__(self, module: ASRModule, source, max_batch_seconds: float = 60.0,
                 max_utterances: int | None = None, policy: str = "error"):
        utts = sorted(read_utterances(source, policy), key=lambda u: u.id)
        if max_utterances is not None:
            utts = utts[:max_utterances]
        if not utts:
            raise ValueError("the dev split is empty: nothing to measure sensitivity on")
        dm = ASRDataModule(module.tokenizer, val=utts, max_batch_seconds=max_batch_seconds,
                           policy=policy)
        dm.setup("validate")
        self.batches = [b for b in dm.val_dataloader() if b["audio"].size(0)]
        self.ids = sorted(i for b in self.batches for i in b["ids"])

    @torch.no_grad()
    def score(self, module: ASRModule) -> dict:
        was_training = module.training
        module.eval()
        losses, refs, hyps = [], [], []
        try:
            with parametrize.cached():
                for b in self.batches:
                    log_probs, out_lens = module.model(b["audio"], b["audio_lens"])
                    losses += module.ctc_loss_per_utterance(
                        log_probs, out_lens, b["targets"], b["target_lens"]).tolist()
                    hyps += [normalize_text(module.tokenizer.decode(ids))
                             for ids in greedy_ctc_decode(log_probs, out_lens)]
                    refs += [normalize_text(t) for t in b["texts"]]
        finally:
            module.train(was_training)
        wer = corpus_wer(refs, hyps)
        return {"loss": sum(losses) / len(losses), "wer": wer.rate,
                "words": wer.ref_length, "utterances": len(refs)}


def score_recipe(module: ASRModule, recipe: QuantRecipe, scorer: DevScorer) -> dict:
    """Dev metrics with `recipe` fake-quantized (then removed again)."""
    attach_fake_quant(module, recipe, strict=True)
    try:
        return scorer.score(module)
    finally:
        detach_fake_quant(module)


# ---------------------------------------------------------------------------- sensitivity

def model_fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def measure_sensitivity(module: ASRModule, groups: Sequence[LayerGroup], base: QuantSpec,
                        options: dict[str, QuantSpec], scorer: DevScorer,
                        cache_dir: str | os.PathLike | None = None,
                        progress: bool = True) -> dict:
    """{"reference": float dev metrics, "measured": {group: {label: dev metrics}}}: each group
    quantized alone at each candidate (`options`: label -> spec, see candidate_specs). Every
    measurement is saved (atomically) as soon as it is made to `cache_dir`/<key>.json, the
    key a hash of everything the numbers
    depend on (weights, base spec, dev utterance ids, groups); the ones found there are not
    measured again."""
    identity = {"version": CACHE_VERSION, "model": model_fingerprint(module),
                "base": base.to_dict(), "dev_ids": scorer.ids,
                "groups": [[g.name, g.pattern, list(g.params)] for g in groups]}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    cache_path = None if cache_dir is None else Path(cache_dir) / f"{key[:24]}.json"
    cache = {"key": key, "reference": None, "measured": {}}
    if cache_path is not None and Path(cache_path).is_file():
        try:
            old = json.loads(Path(cache_path).read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict) and old.get("key") == key:
            cache = old

    def save():
        if cache_path is not None:
            atomic_write_json(cache_path, cache)

    if cache["reference"] is None:
        cache["reference"] = scorer.score(module)
        save()
    todo = [(g, c) for g in groups for c in options
            if c not in cache["measured"].get(g.name, {})]
    bar = tqdm(todo, desc="sensitivity", unit="run", disable=not progress or not todo)
    for g, c in bar:
        bar.set_postfix_str(f"{g.name} @ {c}")
        recipe = QuantRecipe(None, (QuantRule(g.pattern, options[c]),), f"{g.name}@{c}")
        cache["measured"].setdefault(g.name, {})[c] = score_recipe(module, recipe, scorer)
        save()
    return {"reference": cache["reference"], "measured_now": len(todo),
            "cache_path": None if cache_path is None else str(cache_path),
            "measured": {g.name: {c: cache["measured"][g.name][c] for c in options}
                         for g in groups}}


# ---------------------------------------------------------------------------------- runs

def load_float_module(path: str | os.PathLike) -> ASRModule:
    """A float ASRModule from a Lightning checkpoint or a float export (.safetensors)."""
    path = model_path(path)
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            quantized = json.loads((f.metadata() or {}).get("quantized") or "{}")
        if quantized:
            raise ValueError(f"ckpt={str(path)!r} is a packed quantized model; the search "
                             "needs float weights (a float checkpoint or a quant=float export)")
        module = load_quantized(path)
    else:
        module = module_from_checkpoint(load_checkpoint(path))
        if fake_quant_specs(module):
            raise ValueError(f"ckpt={str(path)!r} is a QAT checkpoint; the search needs a "
                             "float model")
    module.normalize = normalize_text
    return module.eval()


def validate_search_config(cfg) -> dict:
    """One clear ValueError for a bad search config, before any work. Returns plain cfg."""
    cfg = plain(cfg)
    require_ckpt(cfg, "(a float checkpoint, or a float .safetensors export)")
    check_files(cfg, "ckpt")
    check_budget(cfg.get("budget_mb"), cfg.get("budget_bpw"))
    cands = cfg.get("candidates")
    allowed = (f"a non-empty list of distinct bit widths in {MIN_BITS}..{MAX_BITS}, e.g. "
               "[2, 3, 4, 8], optionally with a group size ('2g128') or per channel ('4ch')")
    if not isinstance(cands, list) or not cands:
        raise ValueError(f"candidates={cands!r} is invalid; allowed: {allowed}")
    try:
        candidate_specs(cands, base_spec(cfg))
    except ValueError as e:
        raise ValueError(f"candidates={cands!r} is invalid ({e}); allowed: {allowed}") from None
    check_choice("metric", cfg.get("metric"), METRICS)
    check_number("dev_utterances", cfg.get("dev_utterances"), ge=1, integer=True, none_ok=True)
    name = cfg.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name={name!r} is invalid; allowed: letters, digits, '_', '-', '.' "
                         "(it names the recipe file)")
    out = cfg.get("out")
    if out and Path(out).exists() and not cfg.get("overwrite", False):
        raise ValueError(f"out={out!r} exists; pass overwrite=true to replace it")
    check_threads(cfg)
    return cfg


def base_spec(cfg: dict) -> QuantSpec:
    """The `quant` group's spec with its bits replaced by each candidate: everything but bits."""
    quant = dict(cfg.get("quant") or {})
    if quant.get("rules"):
        raise ValueError("quant= must be a plain spec (no rules) for the search: it sets "
                         "everything but the bits, e.g. quant=int2_asym_g32 quant.group_size=64")
    quant["bits"] = MAX_BITS
    recipe = recipe_from_config(quant)
    return recipe.default


def recipe_yaml(cfg: dict, recipe: QuantRecipe, groups: Sequence[LayerGroup],
                header: Sequence[str]) -> str:
    """The recipe in the flat conf/quant/*.yaml form (the `quant` group's keys as given)."""
    base = {k: v for k, v in (cfg.get("quant") or {}).items() if k not in ("name", "rules")}
    default = recipe.default.to_dict()
    doc = {"name": recipe.name, **{k: default.get(k, v) for k, v in base.items()}}
    doc["rules"] = [{"pattern": r.pattern, **{k: v for k, v in r.spec.to_dict().items()
                                              if k in doc and v != default[k]}}
                    for r in recipe.rules]
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
    return "".join(f"# {line}\n" for line in header) + body


def _totals(model, recipe: QuantRecipe) -> dict:
    t = build_report(model, recipe.plan(model), recipe.name).totals()
    return {"size_bytes": t["quantized_bytes"], "size_mb": t["quantized_bytes"] / MB,
            "effective_bits": t["effective_bits"]}


def run_search(cfg, run_dir: str | os.PathLike,
               progress: Callable[[], bool] | bool | None = None) -> dict:
    """Measure (or read from the cache), allocate, write the recipe and search.json."""
    run = start_run(validate_search_config(cfg), run_dir)
    cfg, run_dir = run.cfg, run.dir
    show = bool(cfg.get("progress", True)) if progress is None else bool(progress)
    base = base_spec(cfg)
    options = candidate_specs(cfg["candidates"], base)
    candidates = list(options)
    module = load_float_module(cfg["ckpt"])
    groups = layer_groups(module)
    sizes, fixed, num_weights = group_sizes(module, groups, options)
    budget = budget_bytes_from(cfg.get("budget_mb"), cfg.get("budget_bpw"),
                               fixed_bytes=fixed, num_weights=num_weights)
    # Fail on an impossible budget before the (slow) measurement.
    allocate([GroupOptions(g.name, sizes[g.name], dict.fromkeys(candidates, 0.0))
              for g in groups], budget, fixed)

    sources = data_sources(cfg["data"])
    if sources.get("val") is None:
        raise ValueError("the data config has no dev split (data.val, or data.dev_fraction > 0 "
                         "with data.train): the search measures on dev, never on test")
    scorer = DevScorer(module, sources["val"], float(cfg["data"].get("max_batch_seconds", 60)),
                       cfg.get("dev_utterances"), cfg["data"].get("eval_policy", "error"))
    cache = Path(cfg.get("cache_dir") or cache_dir("search"))
    table = measure_sensitivity(module, groups, base, options, scorer, cache, show)
    metric = cfg["metric"]
    ref = table["reference"]
    cost = {g.name: {b: table["measured"][g.name][b][metric] - ref[metric] for b in candidates}
            for g in groups}
    group_opts = [GroupOptions(g.name, sizes[g.name], cost[g.name]) for g in groups]

    def summary(alloc: Allocation, name: str) -> dict:
        recipe = recipe_of_choice(options, groups, alloc.bits, name)
        return {"choice": alloc.bits,
                "bits": {g: options[c].bits for g, c in alloc.bits.items()},
                "predicted_change": alloc.cost, **_totals(module, recipe),
                "recipe": recipe}

    chosen = summary(allocate(group_opts, budget, fixed), cfg["name"])
    comparisons = []
    for b in candidates:
        uniform = {g.name: b for g in groups}
        u_bytes = fixed + sum(sizes[g.name][b] for g in groups)
        recipe = recipe_of_choice(options, groups, uniform, f"uniform_{b}")
        row = {"candidate": b,
               "uniform": {"predicted_change": sum(cost[g.name][b] for g in groups),
                           **_totals(module, recipe), "recipe": recipe},
               "mixed_same_size": summary(allocate(group_opts, u_bytes, fixed),
                                          f"mixed_at_{b}")}
        comparisons.append(row)
    if cfg.get("verify", True):
        todo = [chosen] + [c[k] for c in comparisons for k in ("uniform", "mixed_same_size")]
        for entry in tqdm(todo, desc="verify", unit="run", disable=not show):
            entry["dev"] = score_recipe(module, entry["recipe"], scorer)
            entry["measured_change"] = entry["dev"][metric] - ref[metric]

    header = [
        f"Mixed precision chosen by asrquant-search (docs/search.md) for {cfg['ckpt']}",
        f"budget {budget / MB:.6f} MB; size {chosen['size_mb']:.6f} MB, "
        f"{chosen['effective_bits']:.3f} bits per quantized weight",
        f"metric: dev {metric}; predicted change {chosen['predicted_change']:+.5f} "
        f"(sum of per-group changes, float dev {metric} {ref[metric]:.5f})",
        "group -> candidate: " + ", ".join(f"{g.name} {chosen['choice'][g.name]}"
                                           for g in groups),
    ]
    text = recipe_yaml(cfg, chosen["recipe"], groups, header)
    # The file must load back to exactly the chosen recipe.
    back = recipe_from_config(yaml.safe_load(text))
    if back.plan(module) != chosen["recipe"].plan(module):
        raise AssertionError("the written recipe does not load back to the chosen one")
    paths = [atomic_write_text(run_dir / f"{cfg['name']}.yaml", text)]
    if cfg.get("out"):
        paths.append(atomic_write_text(cfg["out"], text))

    def plain_entry(e: dict) -> dict:
        return {k: (v.to_dict() if isinstance(v, QuantRecipe) else v) for k, v in e.items()}

    results = {
        "ckpt": str(cfg["ckpt"]), "metric": metric,
        "candidates": {c: s.to_dict() for c, s in options.items()},
        "base_spec": base.to_dict(),
        "dev": {"source": str(sources["val"]) if not isinstance(sources["val"], list)
                else f"{len(sources['val'])} utterances", **ref},
        "budget": {"bytes": budget, "mb": budget / MB,
                   "bits_per_weight": 8 * (budget - fixed) / num_weights,
                   "given": {k: cfg.get(k) for k in ("budget_mb", "budget_bpw")}},
        "fixed_bytes": fixed, "num_searched_weights": num_weights,
        "min_bytes": min_total_bytes(group_opts, fixed),
        "groups": [{"name": g.name, "pattern": g.pattern, "params": list(g.params),
                    "bytes": sizes[g.name], "change": cost[g.name],
                    "dev": table["measured"][g.name]} for g in groups],
        "sensitivity_cache": table["cache_path"], "measured_now": table["measured_now"],
        "chosen": plain_entry(chosen),
        "comparisons": [{"candidate": c["candidate"], "uniform": plain_entry(c["uniform"]),
                         "mixed_same_size": plain_entry(c["mixed_same_size"])}
                        for c in comparisons],
        "recipe_files": [str(p) for p in paths],
    }
    return finish_run(run, results, filename="search.json")
