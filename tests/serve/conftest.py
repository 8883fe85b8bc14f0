"""Fixtures of the serving tests (helpers in serve_helpers.py)."""

from serve_helpers import pipeline, zygote  # noqa: F401 - the session fixtures
