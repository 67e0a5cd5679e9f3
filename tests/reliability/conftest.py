"""Fixtures of the reliability matrix (docs/reliability.md): a tiny synthetic corpus built
once per session, and one tiny trained checkpoint."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory):
    """Cache folder of the tiny synthetic corpus (built on first use, then reused)."""
    from asrquant.data.synthetic import build_synthetic_corpus

    cache = tmp_path_factory.mktemp("reliability_corpus")
    build_synthetic_corpus(cache, n_train=24, n_dev=6, n_test=6, n_test_voices=6, seed=0,
                           progress=False)
    return cache


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, corpus_cache, cfg_of, tiny_data, tiny_model):
    """A float checkpoint of a tiny model trained for one epoch (its best.ckpt path)."""
    from asrquant.runs import run_train, validate_config

    run = tmp_path_factory.mktemp("reliability_train")
    cfg = cfg_of("train", tiny_data + tiny_model + [f"data.synthetic.cache_dir={corpus_cache}",
                                                    "trainer.max_epochs=1"])
    results = run_train(validate_config(cfg, "train"), run)
    return Path(results["best_checkpoint"])
