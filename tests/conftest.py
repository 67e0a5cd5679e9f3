import os

import pytest
import torch
from hydra import compose, initialize_config_dir

from asrquant.cli.common import CONF_DIR
from asrquant.data.tokenizer import CharTokenizer
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import size_config

# Two cores here: one intra-op thread keeps test timings stable and leaves a core free.
torch.set_num_threads(int(os.environ.get("ASRQUANT_TEST_THREADS", "1")))

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))

# The tiny model every quick training uses: one Conformer layer of width 32.
TINY_DIMS = {"num_layers": 1, "d_model": 32, "ffn_dim": 64, "subsampling_channels": 8}


@pytest.fixture
def shared_dir():
    if not os.path.isdir(SHARED):
        pytest.skip(f"shared test data not found at {SHARED} (only developers and CI have it)")
    return SHARED


@pytest.fixture(scope="session")
def cfg_of():
    """cfg_of(command, overrides) composes conf/<command>.yaml as its entry point would;
    hydra=True also returns the `hydra` node (run folders, sweep naming)."""
    def compose_config(name: str, overrides=(), hydra: bool = False):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name=name, overrides=list(overrides),
                           return_hydra_config=hydra)
    return compose_config


@pytest.fixture(scope="session")
def tiny_data():
    """Overrides for a tiny synthetic corpus (24 train, 6 dev, 6 test, 6 held-out voices),
    one thread, no progress bar. Add data.synthetic.cache_dir=... to build it once."""
    return ["data.synthetic.n_train=24", "data.synthetic.n_dev=6", "data.synthetic.n_test=6",
            "data.synthetic.n_test_voices=6", "trainer.enable_progress_bar=false", "threads=1"]


@pytest.fixture(scope="session")
def tiny_dims():
    """The tiny model as keyword arguments of size_config("cpu", vocab_size, **tiny_dims)."""
    return dict(TINY_DIMS)


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny model as overrides (with a 40-piece sentencepiece tokenizer)."""
    return [f"model.{k}={v}" for k, v in TINY_DIMS.items()] + ["tokenizer.vocab_size=40"]


@pytest.fixture(scope="module")
def ckpt():
    """A small random-weight float checkpoint dict (state_dict, model_config, tokenizer_state;
    char tokenizer), as export_packed and the loaders take it; one per test module."""
    torch.manual_seed(0)
    tok = CharTokenizer()
    cfg = size_config("cpu", tok.vocab_size, d_model=32, num_layers=2, ffn_dim=64,
                      subsampling_channels=8, conv_kernel_size=7)
    module = ASRModule(cfg, tok)
    return {"state_dict": module.state_dict(), "model_config": cfg.to_dict(),
            "tokenizer_state": tok.to_state()}
