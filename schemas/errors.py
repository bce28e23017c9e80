"""The one error the wire contract raises for bad input."""

from __future__ import annotations


class SchemaError(ValueError):
    """An event (or a value inside one) that breaks the wire contract.

    The message names the event type and field when they are known, e.g.
    ``order_paid.amount_cents: negative amount -5``, so a dead letter says
    exactly what to fix upstream.
    """
