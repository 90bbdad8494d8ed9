"""Scraping a metrics endpoint over HTTP, as Prometheus does, and reading the samples."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]


def scrape(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


def samples(text: str) -> Samples:
    """(sample name, its labels) -> value: every line of the exposition, _total/_sum/_count included."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample of `name` whose labels include `labels` (None: absent)."""
    want = set(labels.items())
    found = [v for (n, ls), v in got.items() if n == name and want <= ls]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def names(got: Samples) -> set[str]:
    return {n for n, _ in got}
