"""Thin agents: decode -> load -> decide/evolve -> store -> emit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import faust

from app.order_count import count_order
from streams.app import app, dead_letters_topic, order_counts, order_counts_topic, orders_topic
from streams.codec import BadInput, decode_order, decode_state, encode_event, encode_state
from streams.deadletter import dead_letter

log = logging.getLogger(__name__)


@app.agent(orders_topic, concurrency=1)
async def count_orders(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
    """Count each user's paid orders and emit `order_counted` for each."""
    async for event in stream.events():
        message = event.message
        try:
            order = decode_order(message.value)
        except BadInput as exc:
            log.warning(
                "dead letter %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc
            )
            await dead_letters_topic.send(
                key=message.key,
                value=dead_letter(
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    key=message.key,
                    value=message.value,
                    reason=str(exc),
                ),
            )
            yield None
            continue
        state = decode_state(order_counts.get(order.user_id))
        new_state, outputs = count_order(state, order, message.offset)
        if new_state is not state:
            order_counts[order.user_id] = encode_state(new_state)
        for output in outputs:
            await order_counts_topic.send(
                key=output.user_id.encode(), value=encode_event(output.to_wire())
            )
        yield None
