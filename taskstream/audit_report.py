"""What `taskstream audit` says: terminal summary, Markdown/HTML report, JSON."""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from app.audit import Finding, PoolAudit
from schemas.timestamps import format_utc
from taskstream.audit import AuditResult
from taskstream.charts import PoolSeries, pool_burn_down


def summary(result: AuditResult, max_listed: int) -> Iterator[str]:
    """The terminal's account: counts, the first findings, every pool."""
    snapshot, comparison = result.snapshot, result.comparison
    verdict = "AGREES" if result.agrees else "DISAGREES"
    yield (
        f"audit {verdict}: {len(snapshot.inputs)} input messages over {snapshot.partitions} "
        f"partition(s), {result.expected.events} events replayed, "
        f"{comparison.expected} output events expected, {comparison.actual} found "
        f"({comparison.duplicates} duplicate copies)"
    )
    counts = _counts(comparison.findings)
    yield f"  missing {counts['missing']}, extra {counts['extra']}, different {counts['different']}"
    for finding in comparison.findings[:max_listed]:
        yield "  " + _finding_line(finding)
    hidden = len(comparison.findings) - max_listed
    if hidden > 0:
        yield f"  ... and {hidden} more (see --report or --json)"
    for pool in result.pools:
        yield "  " + _pool_line(pool)
        for problem in pool.problems:
            yield f"    PROBLEM: {problem}"
    for problem in result.table_problems:
        yield f"  TABLES: {problem}"
    if result.undecided:
        yield f"  {len(result.undecided)} reward(s) the workers never decided (listed as missing)"
    if snapshot.other_dead_letters:
        yield f"  {snapshot.other_dead_letters} dead letter(s) from budget topics or notifiers"
    if result.expected.applied_late:
        yield (
            f"  {result.expected.applied_late} input(s) the workers applied late, after a "
            "later event (replayed where they were applied; see docs/audit.md)"
        )


def _counts(findings: tuple[Finding, ...]) -> dict[str, int]:
    counts = {"missing": 0, "extra": 0, "different": 0}
    for finding in findings:
        counts[finding.kind] += 1
    return counts


def _finding_line(finding: Finding) -> str:
    doc = finding.expected if finding.expected is not None else finding.actual
    assert doc is not None
    what = f"{doc.get('type', '?')} user={doc.get('user_id', '-')}"
    if "amount_cents" in doc:
        what += f" {doc['amount_cents']}c"
    if finding.kind == "different":
        assert finding.expected is not None
        assert finding.actual is not None
        changed = sorted(
            k
            for k in finding.expected.keys() | finding.actual.keys()
            if finding.expected.get(k) != finding.actual.get(k)
        )
        what += " differs in " + ", ".join(
            f"{k} (expected {finding.expected.get(k)!r}, found {finding.actual.get(k)!r})"
            for k in changed
        )
    return f"{finding.kind.upper():9} {finding.topic} {finding.event_id} {what}"


def _pool_line(pool: PoolAudit) -> str:
    dry = "never ran dry" if pool.dry_at is None else f"first refusal {format_utc(pool.dry_at)}"
    unit = pool.unit
    return (
        f"pool {pool.pool_id}: total {pool.total} {unit}; issued {pool.issued} {unit} = "
        f"granted {pool.granted_units} {unit} ({pool.granted} rewards) - revoked "
        f"{pool.revoked_units} {unit} ({pool.revoked} rewards); {pool.rejected} rewards "
        f"refused for budget; at master {pool.at_master} {unit}, in buckets "
        f"{pool.in_buckets} {unit}; {pool.refill_requests} refill requests, "
        f"{pool.refused_requests} requests refused by the master (+{pool.dry_notices} "
        f"dry notices to buckets); {dry}"
    )


def write_report(path: Path, result: AuditResult) -> Path | None:
    """Write the report (Markdown or HTML by suffix) and its chart; the chart's path."""
    chart = path.with_suffix(".png") if result.pools else None
    if chart is not None:
        pool_burn_down(chart, series(result), "audit: budget burn-down (event time)")
    lines = list(_markdown(result, None if chart is None else chart.name))
    if path.suffix == ".html":
        path.write_text(_html(lines, None if chart is None else chart.name))
    else:
        path.write_text("\n".join(lines) + "\n")
    return chart


def series(result: AuditResult) -> list[PoolSeries]:
    return [PoolSeries(p.pool_id, p.unit, p.total, p.burn_down, p.dry_at) for p in result.pools]


def _markdown(result: AuditResult, chart: str | None) -> Iterator[str]:
    yield "# taskstream audit"
    yield ""
    yield from (line.strip() for line in summary(result, 0) if not line.startswith("  pool"))
    yield ""
    yield "## Pools"
    yield ""
    yield (
        "| pool | unit | total | issued (units) | granted (rewards) | revoked (rewards) "
        "| refused for budget (rewards) | at master (units) | in buckets (units) "
        "| refill requests | requests refused | dry notices | first refusal | problems |"
    )
    yield "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    for p in result.pools:
        dry = "" if p.dry_at is None else format_utc(p.dry_at)
        problems = "; ".join(p.problems) or "none"
        yield (
            f"| {p.pool_id} | {p.unit} | {p.total} | {p.issued} | {p.granted} | {p.revoked} "
            f"| {p.rejected} | {p.at_master} | {p.in_buckets} | {p.refill_requests} "
            f"| {p.refused_requests} | {p.dry_notices} | {dry} | {problems} |"
        )
    if chart is not None:
        yield ""
        yield f"![burn-down]({chart})"
    yield ""
    yield "## Findings"
    yield ""
    if not result.comparison.findings:
        yield "None: every expected output event was found, with the same content."
    for finding in result.comparison.findings:
        yield f"- {_finding_line(finding)}"


def _html(lines: list[str], chart: str | None) -> str:
    """A plain page: the Markdown's text, the table as a table, the chart inline."""
    body: list[str] = []
    for line in lines:
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("|---"):
            continue
        elif line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        elif line.startswith("!["):
            if chart is not None:
                body.append(f'<img src="{html.escape(chart)}" alt="burn-down">')
        elif line.startswith("- "):
            body.append(f"<li><code>{html.escape(line[2:])}</code></li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    text = "\n".join(body)
    text = text.replace("<tr>", "<table border=1><tr>", 1)
    last = text.rfind("</tr>")
    if last >= 0:
        text = text[: last + 5] + "</table>" + text[last + 5 :]
    return f"<!doctype html><meta charset=utf-8><title>taskstream audit</title>\n{text}\n"


def as_json(result: AuditResult) -> bytes:
    doc: dict[str, Any] = {
        "agrees": result.agrees,
        "input_messages": len(result.snapshot.inputs),
        "partitions": result.snapshot.partitions,
        "events_replayed": result.expected.events,
        "expected": result.comparison.expected,
        "found": result.comparison.actual,
        "duplicates": result.comparison.duplicates,
        "findings": [
            {
                "kind": f.kind,
                "topic": f.topic,
                "event_id": f.event_id,
                "expected": f.expected,
                "actual": f.actual,
            }
            for f in result.comparison.findings
        ],
        "pools": [
            {
                "pool_id": p.pool_id,
                "unit": p.unit,
                "total": p.total,
                "issued": p.issued,
                "granted": p.granted,
                "revoked": p.revoked,
                "revoked_units": p.revoked_units,
                "rejected": p.rejected,
                "to_buckets": p.to_buckets,
                "from_buckets": p.from_buckets,
                "at_master": p.at_master,
                "in_buckets": p.in_buckets,
                "refill_requests": p.refill_requests,
                "denials": p.denials,
                "refused_requests": p.refused_requests,
                "dry_notices": p.dry_notices,
                "granted_units": p.granted_units,
                "recalls": p.recalls,
                "dry_at": None if p.dry_at is None else format_utc(p.dry_at),
                "problems": list(p.problems),
            }
            for p in result.pools
        ],
        "table_problems": result.table_problems,
        "undecided_rewards": result.undecided,
        "other_dead_letters": result.snapshot.other_dead_letters,
        "applied_late": result.expected.applied_late,
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)
