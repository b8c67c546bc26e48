"""The local development stack: Kafka, Redis and PostgreSQL without Docker.

``resultlog dev up`` (see :mod:`resultlog.devstack.commands`) and the test fixtures use
:class:`DevStack`; each service lives in its own module (``kafka``, ``redis``,
``postgres``) on top of :mod:`resultlog.devstack.process`. Fault tests use
:func:`private_stack` (:mod:`resultlog.devstack.private`): a stack of their own to kill.
"""

from resultlog.devstack.kafka import KAFKA_VERSION
from resultlog.devstack.private import PartitionState, PrivateStack, private_stack
from resultlog.devstack.service import ServiceState, UpReport
from resultlog.devstack.stack import SERVICE_NAMES, DevStack

__all__ = [
    "KAFKA_VERSION",
    "SERVICE_NAMES",
    "DevStack",
    "PartitionState",
    "PrivateStack",
    "ServiceState",
    "UpReport",
    "private_stack",
]
