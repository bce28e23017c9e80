"""TASKSTREAM_COMPRESSION: what the worker's producers compress with, and
that every codec it may choose is one our own readers (aiokafka, in faust's
recovery and the allocator) can decompress."""

from __future__ import annotations

import pytest
from aiokafka import codec

from streams.config import COMPRESSIONS, Settings
from streams.kafka.producer import producer_config


def test_lz4_is_the_default() -> None:
    settings = Settings.from_env({})
    assert settings.compression == "lz4"
    assert producer_config({}, 1024, settings.compression)["compression.type"] == "lz4"


@pytest.mark.parametrize(("given", "taken"), [("ZSTD", "zstd"), (" none ", "none"), ("", "lz4")])
def test_the_setting_is_read_without_regard_to_case(given: str, taken: str) -> None:
    assert Settings.from_env({"TASKSTREAM_COMPRESSION": given}).compression == taken


def test_an_unknown_codec_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ValueError, match="must be one of lz4, zstd, snappy, gzip, none, got 'brotli'"
    ):
        Settings.from_env({"TASKSTREAM_COMPRESSION": "brotli"})


def test_aiokafka_reads_every_codec_we_may_write() -> None:
    """Without cramjam aiokafka raises UnsupportedCodecError on lz4, snappy
    and zstd batches: a recovering worker could not read its changelog."""
    available = {
        "lz4": codec.has_lz4(),
        "zstd": codec.has_zstd(),
        "snappy": codec.has_snappy(),
        "gzip": codec.has_gzip(),
    }
    assert available == dict.fromkeys(available, True)
    assert set(COMPRESSIONS) == {*available, "none"}
    payload = b'{"type":"task_advanced","user_id":"u1"}' * 20
    assert codec.lz4_decode(codec.lz4_encode(payload)) == payload
    assert codec.zstd_decode(codec.zstd_encode(payload)) == payload
