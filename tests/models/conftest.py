"""Model tests run on one thread: tiny tensors gain nothing from threads, and on a shared 2-core
machine threads stall each other (50-step overfits took up to 30× longer with two)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
