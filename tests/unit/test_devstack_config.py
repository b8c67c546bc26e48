"""The local stack's Kafka layout: one node as it always was, or a cluster of three."""

from __future__ import annotations

from pathlib import Path

import pytest

from resultlog.devstack.kafka import KafkaService, broker_config
from resultlog.devstack.kafka_nodes import cluster_bootstrap, node_ports, shared_cluster_id
from resultlog.devstack.private import private_settings
from resultlog.errors import DevStackError
from resultlog.settings import Settings, port_of


def _quiet(line: str) -> None:
    pass


def test_one_node_keeps_its_name_directory_ports_and_single_replicas(tmp_path: Path) -> None:
    settings = Settings(dev_dir=str(tmp_path))
    node = KafkaService(settings, _quiet)
    assert (node.name, node.home, node.log_path.name) == ("kafka", tmp_path / "kafka", "kafka.log")
    assert [p.number for p in node.ports] == [19092, 19093]
    config = broker_config(port=19092, controller_port=19093, data_dir=tmp_path)
    assert config["node.id"] == "1"
    assert config["controller.quorum.voters"] == "1@127.0.0.1:19093"
    for key in ("default.replication.factor", "min.insync.replicas",
                "offsets.topic.replication.factor", "transaction.state.log.min.isr"):
        assert config[key] == "1", key


def test_three_nodes_form_one_quorum_with_three_replicas_and_two_in_sync(tmp_path: Path) -> None:
    settings = Settings(dev_dir=str(tmp_path), dev_kafka_brokers=3)
    nodes = [KafkaService(settings, _quiet, node_id=i) for i in (1, 2, 3)]
    assert [n.name for n in nodes] == ["kafka-1", "kafka-2", "kafka-3"]
    assert [[p.number for p in n.ports] for n in nodes] == [[19092, 19093], [19094, 19095], [19096, 19097]]
    assert cluster_bootstrap(settings) == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    config = broker_config(
        port=19094, controller_port=19095, data_dir=tmp_path, node_id=2,
        voters={1: 19093, 2: 19095, 3: 19097},
    )
    assert config["node.id"] == "2"
    assert config["controller.quorum.voters"] == "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    assert config["offsets.topic.replication.factor"] == config["transaction.state.log.replication.factor"] == "3"
    assert config["min.insync.replicas"] == config["transaction.state.log.min.isr"] == "2"


def test_node_addresses_are_listed_one_per_node_or_derived_from_the_first(tmp_path: Path) -> None:
    listed = Settings(dev_kafka_brokers=3, kafka_bootstrap_servers="127.0.0.1:21000,127.0.0.1:22000,127.0.0.1:23000")
    assert node_ports(listed) == [21000, 22000, 23000]
    with pytest.raises(DevStackError, match="lists 2 addresses for 3 nodes"):
        node_ports(Settings(dev_kafka_brokers=3, kafka_bootstrap_servers="127.0.0.1:21000,127.0.0.1:22000"))
    with pytest.raises(DevStackError, match="overlap"):
        node_ports(Settings(dev_kafka_brokers=3, kafka_bootstrap_servers="127.0.0.1:21000,127.0.0.1:21001,127.0.0.1:23000"))
    with pytest.raises(DevStackError, match="no node 4"):
        KafkaService(listed, _quiet, node_id=4)


def test_every_node_formats_with_one_cluster_id(tmp_path: Path) -> None:
    names = ["kafka-1", "kafka-2", "kafka-3"]
    first = shared_cluster_id(tmp_path, names)
    assert len(first) == 22
    assert shared_cluster_id(tmp_path, names) == first
    # The id file lost, one node formatted: its id is kept, not replaced.
    (tmp_path / "kafka-cluster.id").unlink()
    (tmp_path / "kafka-2" / "data").mkdir(parents=True)
    (tmp_path / "kafka-2" / "data" / "meta.properties").write_text("version=1\ncluster.id=abc\nnode.id=2\n")
    assert shared_cluster_id(tmp_path, names) == "abc"


def test_a_private_stack_takes_free_ports_of_its_own_and_replicates_on_three_nodes(tmp_path: Path) -> None:
    base = Settings()
    one = private_settings(base, tmp_path, brokers=1)
    three = private_settings(base, tmp_path, brokers=3)
    assert (one.topic_replication_factor, one.topic_min_insync_replicas) == (1, 0)
    assert (three.topic_replication_factor, three.topic_min_insync_replicas) == (3, 2)
    assert three.dev_dir == str(tmp_path) and three.dev_kafka_brokers == 3
    assert three.redis_url.endswith("/0") and "resultlog:resultlog@" in three.postgres_dsn
    kafka = node_ports(three)
    ports = [*kafka, *(p + 1 for p in kafka), port_of(three.redis_url, 0), port_of(three.postgres_dsn, 0)]
    assert len(set(ports)) == 8
    assert not {19092, 19093, 16379, 15432} & set(ports)
    with pytest.raises(DevStackError, match="brokers=2"):
        private_settings(base, tmp_path, brokers=2)


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    """Kafka's storage tool reads "-t -abc..." as a missing id and an option."""
    from resultlog.devstack.kafka_nodes import random_cluster_id

    ids = [random_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)
