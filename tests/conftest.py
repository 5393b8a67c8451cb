"""Every test run starts by claiming what it shares with no other run (tests/isolation.py)."""

import tests.isolation  # noqa: F401
