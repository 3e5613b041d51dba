"""A small load test: 60 requests at concurrency 16, no 5xx, and the server's memory stays flat."""

from __future__ import annotations

from bench.serve import load_test


def test_sixty_requests_at_sixteen_clients(server):
    result = load_test(server, {"classes": "sneaker", "n": 1, "steps": 20}, requests=60, concurrency=16)
    assert result["statuses"] == {"200": 60}  # 16 clients fit the default queue of 32 jobs: no 429 either
    assert result["rss_end_mb"] - result["rss_after_warmup_mb"] < 16
