"""The worker's hot path: fetched records -> processor -> RocksDB, changelog, outputs.

- `worker`: the `Worker` object (built from `Settings` by streams.app),
  which faust's consumer hands each fetch of the input topics to;
- `state_store`: one partition's table writes as one RocksDB write batch
  and its changelog records through librdkafka.
"""
