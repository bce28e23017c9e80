"""`bench profile` sums py-spy's frames by area: each frame must land in its
own package's area, whatever other package's name its path contains."""

from __future__ import annotations

import pytest

from bench.profile import area_of


@pytest.mark.parametrize(
    ("frame", "area"),
    [
        ("send_all (streams/kafka/producer.py:150)", "shell (streams/)"),
        ("getmany (streams/kafka/transport.py:80)", "shell (streams/)"),
        ("fetched_records (aiokafka/consumer/fetcher.py:1)", "aiokafka"),
        ("on_message (faust/app/base.py:3)", "faust"),
        ("handle (app/engine.py:3)", "core (app/)"),
        ("decode_input (schemas/codec.py:9)", "core (schemas/)"),
        ("_run (/usr/lib/python3.11/asyncio/events.py:80)", "asyncio"),
        ("get (/venv/lib/python3.11/site-packages/rocksdict/__init__.py:1)", "rocksdict"),
    ],
)
def test_a_frame_counts_for_its_own_package(frame: str, area: str) -> None:
    assert area_of(frame) == area
