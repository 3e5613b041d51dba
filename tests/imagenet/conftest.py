"""Registers the `slow` marker used by the ImageNet tests (over about a minute on 2 cores)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes over about a minute on a 2-core machine")
