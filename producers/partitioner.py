"""Key → partition, exactly as Kafka's Java client (and aiokafka's default) computes it.

The emitter builds record batches per partition itself (see :mod:`.pipeline`), so it
must pick partitions the same way every other Kafka client does: a consumer, a Java
producer or aiokafka's own ``send()`` must all agree on where a task's events live.
That is ``murmur2(key) & 0x7fffffff % partitions`` with Kafka's murmur2 variant (seed
``0x9747b28c``, little-endian words).
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` as an unsigned 32-bit int.

    Same result as ``org.apache.kafka.common.utils.Utils.murmur2`` (read as unsigned)
    and ``aiokafka.partitioner.murmur2``; about twice as fast as the latter because
    the 4-byte words are unpacked in one call.
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK
    words = length >> 2
    if words:
        for k in struct.unpack_from(f"<{words}I", data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            k = (k * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        base = length - tail
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner assigns to ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


class KeyHashes:
    """``murmur2(key) & 0x7fffffff`` with a bounded memo.

    A task emits several events (RECEIVED, STARTED, SUCCESS...) close together, so the
    same key is hashed again soon; the memo is simply dropped when full, which keeps it
    O(1) and bounded without LRU bookkeeping.
    """

    __slots__ = ("_memo", "_limit")

    def __init__(self, limit: int = 65_536) -> None:
        self._memo: dict[bytes, int] = {}
        self._limit = limit

    def __call__(self, key: bytes) -> int:
        h = self._memo.get(key)
        if h is None:
            if len(self._memo) >= self._limit:
                self._memo.clear()
            h = self._memo[key] = murmur2(key) & 0x7FFFFFFF
        return h
