"""The emitter's partitioner must place keys exactly where every other Kafka client does."""

from __future__ import annotations

import uuid

from aiokafka.partitioner import DefaultPartitioner, murmur2 as aiokafka_murmur2  # type: ignore[import-untyped]
from hypothesis import given, settings, strategies as st

from resultlog.producers.partitioner import KeyHashes, murmur2, partition_for


def _signed(h: int) -> int:
    return h - (1 << 32) if h & 0x80000000 else h


def test_java_reference_values() -> None:
    # From Apache Kafka's UtilsTest.testMurmur2 (Java ints, i.e. signed).
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, expected in cases.items():
        assert _signed(murmur2(data)) == expected, data


@settings(max_examples=2000)
@given(st.binary(max_size=80))
def test_same_hash_as_aiokafka(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@given(st.text(min_size=1, max_size=60), st.integers(1, 300))
def test_same_partition_as_aiokafka_default_partitioner(task_id: str, n: int) -> None:
    key = task_id.encode()
    partitions = list(range(n))
    assert partition_for(key, n) == DefaultPartitioner()(key, partitions, partitions)


def test_key_hashes_memo_is_bounded_and_correct() -> None:
    hashes = KeyHashes(limit=10)
    keys = [uuid.uuid4().hex.encode() for _ in range(35)]
    for key in keys + keys:
        assert hashes(key) == murmur2(key) & 0x7FFFFFFF
    assert len(hashes._memo) <= 10
