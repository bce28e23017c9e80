"""The in-memory ledger's invariants, and the benchmark log's determinism."""

from __future__ import annotations

import pytest

from app.budget import Ledger, PoolBalance
from app.catalog import Pool
from bench.loggen import LogShape, generate


def test_ledger_debits_all_or_nothing_and_never_below_zero() -> None:
    ledger = Ledger([Pool("cash", 100, "cents")])
    assert ledger.try_debit("cash", 60)
    assert not ledger.try_debit("cash", 41)
    assert ledger.try_debit("cash", 40)
    assert ledger.balances()["cash"] == PoolBalance("cash", 100, 0)


def test_ledger_refuses_a_credit_that_would_exceed_the_total() -> None:
    ledger = Ledger([Pool("cash", 100, "cents")])
    ledger.try_debit("cash", 30)
    ledger.credit("cash", 30)
    with pytest.raises(ValueError, match="exceed its total"):
        ledger.credit("cash", 1)


def test_ledger_restores_from_balances() -> None:
    ledger = Ledger.from_balances([PoolBalance("eggs", 5, 2)])
    assert ledger.balances()["eggs"].issued == 3


def test_benchmark_log_is_the_same_on_every_run() -> None:
    shape = LogShape(events=3000, users=500, tick_every=1000)
    first = list(generate(shape))
    assert first == list(generate(shape))
    kinds = {type(e).__name__ for e in first}
    assert kinds == {"TaskClaim", "OrderPaid", "OrderRefunded", "Tick"}
