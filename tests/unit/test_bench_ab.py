"""`bench ab`'s pure parts: the trees take turns, and the report's medians
and ratios are of the runs given."""

from __future__ import annotations

import math
from pathlib import Path

from bench.ab import Sample, Tree, order, report

THIS, OTHER = Tree("this tree", Path("/a")), Tree("main (abc1234)", Path("/b"))


def test_neither_tree_always_runs_first() -> None:
    runs = [order([THIS, OTHER], n) for n in range(4)]
    assert [first.label for first, _ in runs] == ["this tree", "main (abc1234)"] * 2
    assert all({a.label, b.label} == {THIS.label, OTHER.label} for a, b in runs)


def test_the_report_gives_medians_and_their_ratios() -> None:
    samples = {
        THIS.label: [
            Sample(50_000, 8.0, 4.0, 18.0),
            Sample(40_000, 9.0, 5.0, 19.0),
            Sample(90_000, 20.0, 9.0, 17.0),
        ],
        OTHER.label: [
            Sample(40_000, 10.0, 5.0, 20.0),
            Sample(40_000, 11.0, 6.0, 21.0),
            Sample(10_000, 9.0, 4.0, 22.0),
        ],
    }
    table = report(samples, [THIS, OTHER]).splitlines()
    assert table[2] == "| this tree | 50,000 | 9.00 | 5.00 | 18.00 |"
    assert table[3] == "| main (abc1234) | 40,000 | 10.00 | 5.00 | 21.00 |"
    assert table[4] == "| this / other | 1.25x | 0.90x | 1.00x | 0.86x |"


def test_a_tree_without_the_batch_step_shows_no_ratio_for_it() -> None:
    samples = {
        THIS.label: [Sample(50_000, 8.0, 4.0, 18.0)],
        OTHER.label: [Sample(40_000, 10.0, 5.0, math.nan)],
    }
    assert report(samples, [THIS, OTHER]).splitlines()[-1].endswith("| n/a |")
