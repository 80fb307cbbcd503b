"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread per test: on the 2-core CI machine, two OpenMP threads competing with
    subprocesses spin-wait and slow small models by up to 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
