"""Unit tier: hypothesis bounded and derandomized so the tier runs in seconds
and a failure reproduces on every machine. HYPOTHESIS_PROFILE=thorough runs
many more (still reproducible) examples, for a nightly job or before a release."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "unit",
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("thorough", settings.get_profile("unit"), max_examples=3000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "unit"))
