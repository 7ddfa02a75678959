"""pytest-benchmark suites (a package so that its conftest never shadows tests/conftest)."""
