"""Kafka plumbing: faust's transport and recovery, repaired and extended for
this app only (subclasses registered through faust's own registries), and
the librdkafka producer of the hot path.

- `transport`: the consumer (batch delivery to the worker, the processor's
  own commit positions, rewinds) and its consumer thread;
- `recovery`: the table manager whose recovery seeks before it resumes;
- `read_offsets`, `positions`: the bookkeeping behind them, on plain values;
- `producer`: outputs and changelog records through confluent-kafka.
"""
