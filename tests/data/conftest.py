"""Fixtures shared by the data tests (defined in tests/helpers/data_fixtures.py)."""

from tests.helpers.data_fixtures import synth_roots  # noqa: F401 - registers the session fixture
