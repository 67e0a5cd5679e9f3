import os

import pytest
import torch

# Two cores here: one intra-op thread keeps test timings stable and leaves a core free.
torch.set_num_threads(int(os.environ.get("ASRQUANT_TEST_THREADS", "1")))

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


@pytest.fixture
def shared_dir():
    if not os.path.isdir(SHARED):
        pytest.skip(f"shared test data not found at {SHARED} (only developers and CI have it)")
    return SHARED
