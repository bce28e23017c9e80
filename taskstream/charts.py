"""PNG charts of budget pools and payouts (simulate, audit): matplotlib, no display.

    pool_burn_down(Path("burn.png"), [PoolSeries(...)], "campaign X", payouts=[...])

One panel per pool: what is left of it over event time (a step line from
its total down), with the moment it first refused a reward marked; an
optional last panel with the cumulative payout of each template. Points
are running totals in log order; they are plotted by event time (see
`by_event_time`), all panels on one time axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never look for a display

# Imported after the backend is chosen.
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from schemas.timestamps import format_utc, to_datetime

DRY_COLOUR = "#c0392b"
ISSUED_COLOUR = "#7f8c8d"


@dataclass(frozen=True, slots=True)
class PoolSeries:
    pool_id: str
    unit: str  # "cents" | "items"
    total: int
    points: tuple[tuple[int, int], ...]  # (at in epoch microseconds, issued so far)
    dry_at: int | None  # when the pool first refused a reward, if it did


@dataclass(frozen=True, slots=True)
class PayoutSeries:
    template_id: str
    points: tuple[tuple[int, int], ...]  # (at in epoch microseconds, net payout so far, cents)


def pool_burn_down(
    path: Path,
    pools: Sequence[PoolSeries],
    title: str,
    *,
    payouts: Sequence[PayoutSeries] = (),
) -> None:
    """Write a PNG: remaining budget per pool over event time, dry-out marked,
    and (when `payouts` is given) the cumulative payout per template."""
    panels = len(pools) + (1 if payouts else 0)
    figure = Figure(figsize=(10, 1.0 + 2.6 * max(panels, 1)), layout="constrained")
    figure.suptitle(title)
    if panels == 0:
        axes = figure.subplots()
        axes.text(0.5, 0.5, "no pools and no payouts", ha="center", va="center")
        axes.set_axis_off()
        figure.savefig(path, format="png", dpi=100)
        return
    instants = [at for p in pools for at, _ in p.points] + [
        at for s in payouts for at, _ in s.points
    ]
    instants += [p.dry_at for p in pools if p.dry_at is not None]
    end = max(instants, default=None)
    grid = figure.subplots(panels, 1, squeeze=False, sharex=True)
    for axes, pool in zip(grid[:, 0], pools, strict=False):
        _pool_panel(axes, pool, end)
    if payouts:
        _payout_panel(grid[-1, 0], payouts, end)
    for axes in grid[:, 0]:
        axes.grid(alpha=0.3)
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    figure.savefig(path, format="png", dpi=100)


def by_event_time(points: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Running totals recorded in log order, re-accumulated in event-time order.

    A log file need not be sorted by time across users; each point's change
    is kept with its instant, so the value at t is the sum of the changes
    stamped <= t (for a time-ordered log: the points themselves)."""
    changes = [(at, value - before) for (at, value), before in zip(
        points, [0, *(value for _, value in points)], strict=False
    )]  # fmt: skip
    changes.sort(key=lambda change: change[0])  # stable: one instant keeps log order
    total, out = 0, []
    for at, change in changes:
        total += change
        out.append((at, total))
    return out


def _steps(
    points: Sequence[tuple[int, int]], start: int, end: int | None
) -> tuple[list[datetime], list[int]]:
    """A step line from `start` through the points to the end of the chart."""
    ordered = by_event_time(points)
    times = [to_datetime(ordered[0][0]), *(to_datetime(at) for at, _ in ordered)]
    values = [start, *(value for _, value in ordered)]
    if end is not None and end > ordered[-1][0]:
        times.append(to_datetime(end))
        values.append(values[-1])
    return times, values


def _pool_panel(axes: Axes, pool: PoolSeries, end: int | None) -> None:
    unit = "items" if pool.unit == "items" else "cents"
    title = f"pool {pool.pool_id}: {pool.total:,} {unit}"
    if pool.dry_at is not None:  # in the title, where no data point can hide it
        title += f"; runs dry {format_utc(pool.dry_at)} (dashed line)"
    axes.set_title(title, loc="left", fontsize=10)
    axes.set_ylabel(unit)
    axes.set_ylim(0, max(pool.total, 1) * 1.08)
    if pool.dry_at is not None:
        axes.axvline(to_datetime(pool.dry_at), color=DRY_COLOUR, linestyle="--")  # type: ignore[arg-type]
    if not pool.points:
        axes.axhline(pool.total, color="grey")
        axes.text(0.5, 0.5, "never drawn on", transform=axes.transAxes, ha="center")
        return
    times, issued = _steps(pool.points, 0, end)
    remaining = [pool.total - units for units in issued]
    axes.step(times, remaining, where="post", label="remaining")  # type: ignore[arg-type]
    axes.step(times, issued, where="post", label="issued", color=ISSUED_COLOUR)  # type: ignore[arg-type]
    axes.legend(fontsize=8, loc="center left")


def _payout_panel(axes: Axes, payouts: Sequence[PayoutSeries], end: int | None) -> None:
    axes.set_title("cumulative payout per template", loc="left", fontsize=10)
    axes.set_ylabel("payout (cents)")
    for series in payouts:
        if series.points:
            times, cents = _steps(series.points, 0, end)
            axes.step(times, cents, where="post", label=series.template_id)  # type: ignore[arg-type]
    if any(series.points for series in payouts):
        axes.legend(fontsize=8, loc="upper left")
