"""Shared pytest settings: a modest hypothesis profile, and one torch thread for the whole suite."""
import pytest
import torch
from hypothesis import settings

settings.register_profile("iaf_repro", max_examples=25, deadline=None)
settings.load_profile("iaf_repro")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    "The models under test are tiny: one thread runs them fastest and never fights another process for the cores."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
