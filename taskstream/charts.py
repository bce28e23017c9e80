"""PNG charts of budget pools and payouts (simulate, audit): matplotlib, no display.

    pool_burn_down(Path("burn.png"), [PoolSeries(...)], "campaign X", payouts=[...])

One panel per pool: what is left of it over event time (a step line from
its total down), with the moment it first refused a reward marked; an
optional last panel with the cumulative payout of each template. Points
are plotted in event-time order (a log file need not be sorted by time
across users; for a time-ordered log the curve is exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never look for a display

# Imported after the backend is chosen.
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from schemas.timestamps import format_utc, to_datetime

DRY_COLOUR = "#c0392b"


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
    else:
        grid = figure.subplots(panels, 1, squeeze=False)
        for axes, pool in zip(grid[:, 0], pools, strict=False):
            _pool_panel(axes, pool)
        if payouts:
            _payout_panel(grid[-1, 0], payouts)
    figure.savefig(path, format="png", dpi=100)


def _pool_panel(axes: Axes, pool: PoolSeries) -> None:
    points = sorted(pool.points, key=lambda point: point[0])
    unit = "items" if pool.unit == "items" else "cents"
    axes.set_title(f"pool {pool.pool_id}: {pool.total:,} {unit}", loc="left", fontsize=10)
    axes.set_ylabel(f"remaining ({unit})")
    axes.set_ylim(0, max(pool.total, 1) * 1.05)
    if not points:
        axes.axhline(pool.total, color="grey")
        axes.text(0.5, 0.5, "never drawn on", transform=axes.transAxes, ha="center")
        return
    times = [to_datetime(points[0][0]), *(to_datetime(at) for at, _ in points)]
    remaining = [pool.total, *(pool.total - issued for _, issued in points)]
    axes.step(times, remaining, where="post", label="remaining")  # type: ignore[arg-type]
    axes.grid(alpha=0.3)
    if pool.dry_at is not None:
        axes.axvline(to_datetime(pool.dry_at), color=DRY_COLOUR, linestyle="--")  # type: ignore[arg-type]
        axes.annotate(
            f"runs dry {format_utc(pool.dry_at)}",
            xy=(to_datetime(pool.dry_at), pool.total * 0.9),  # type: ignore[arg-type]
            color=DRY_COLOUR,
            fontsize=9,
            xytext=(4, 0),
            textcoords="offset points",
        )


def _payout_panel(axes: Axes, payouts: Sequence[PayoutSeries]) -> None:
    axes.set_title("cumulative payout per template", loc="left", fontsize=10)
    axes.set_ylabel("payout (cents)")
    axes.grid(alpha=0.3)
    for series in payouts:
        points = sorted(series.points, key=lambda point: point[0])
        if not points:
            continue
        axes.step(
            [to_datetime(at) for at, _ in points],  # type: ignore[arg-type]
            [cents for _, cents in points],
            where="post",
            label=series.template_id,
        )
    if any(series.points for series in payouts):
        axes.legend(fontsize=8, loc="upper left")
