"""Shared pytest settings: a modest hypothesis profile, since every example runs autograd Jacobians."""
from hypothesis import settings

settings.register_profile("iaf_repro", max_examples=25, deadline=None)
settings.load_profile("iaf_repro")
