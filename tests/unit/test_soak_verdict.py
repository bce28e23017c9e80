"""bench.soak.verdict: a soak run can fail (steady throughput, bounded lag, flat memory)."""

from __future__ import annotations

from bench.soak import Sample, verdict

RATE = 1000.0


def run(
    minutes: int = 9, consumed_share: float = 1.0, rss: float = 300.0, growth: float = 0.0
) -> list[Sample]:
    samples = []
    for n in range(1, minutes * 6 + 1):
        t = n * 10.0
        produced = int(RATE * t)
        samples.append(Sample(t, produced, int(produced * consumed_share), rss + growth * n))
    samples.append(Sample(minutes * 60.0 + 10, samples[-1].produced, samples[-1].produced, rss))
    return samples


def test_a_steady_flat_run_passes() -> None:
    assert verdict(run(), RATE, 9 * 60) == []


def test_a_slow_worker_fails_on_throughput_and_lag() -> None:
    failures = verdict(run(consumed_share=0.8), RATE, 9 * 60)
    assert any(f.startswith("minute 1 consumed") for f in failures)
    assert any(f.startswith("lag reached") for f in failures)


def test_memory_that_keeps_growing_fails() -> None:
    failures = verdict(run(growth=5.0), RATE, 9 * 60)
    assert failures == [failures[0]]
    assert failures[0].startswith("RSS still growing")


def test_a_worker_that_never_catches_up_fails() -> None:
    samples = run()
    samples[-1] = Sample(samples[-1].t, samples[-1].produced, samples[-1].produced - 5, 300.0)
    assert verdict(samples, RATE, 9 * 60) == ["lag 5 at the end: the worker did not catch up"]
