"""Shared pytest settings: a modest hypothesis profile, a scratch runs folder, and one torch thread for the whole suite."""
import os

import pytest
import torch
from hypothesis import settings

# Local runs draw fresh examples each time (and keep failures in .hypothesis/); CI (CI=true) draws the same
# examples every run, so a submission's result does not depend on the luck of the draw.
settings.register_profile("iaf_repro", max_examples=25, deadline=None)
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, database=None)
settings.load_profile("ci" if os.environ.get("CI") else "iaf_repro")


@pytest.fixture(autouse=True, scope="session")
def runs_in_a_scratch_folder(tmp_path_factory):
    "Runs a test trains without naming a runs folder land in a scratch one, never in the user's (~/.cache/iaf_repro/runs)."
    before = os.environ.get("IAF_REPRO_RUNS")
    os.environ["IAF_REPRO_RUNS"] = str(tmp_path_factory.mktemp("runs"))
    yield
    if before is None: del os.environ["IAF_REPRO_RUNS"]
    else: os.environ["IAF_REPRO_RUNS"] = before


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    "The models under test are tiny: one thread runs them fastest and never fights another process for the cores."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
