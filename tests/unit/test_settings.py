from __future__ import annotations

import pytest

from resultlog.errors import ConfigurationError
from resultlog.settings import Settings


def test_defaults_point_at_the_local_stack() -> None:
    s = Settings.from_env({})
    assert s.kafka_bootstrap_servers == "127.0.0.1:19092"
    assert s.result_ttl_s == 86_400
    assert s.dead_letter_topic == "resultlog.events.deadletter"


def test_environment_values_are_parsed() -> None:
    s = Settings.from_env({"RESULTLOG_TOPIC_PARTITIONS": "3", "RESULTLOG_RESULT_TTL_S": "0", "PATH": "/bin"})
    assert (s.topic_partitions, s.result_ttl_s) == (3, 0)


def test_an_unknown_setting_is_an_error_that_names_it() -> None:
    with pytest.raises(ConfigurationError, match="RESULTLOG_TOPIC_PARTITION;"):
        Settings.from_env({"RESULTLOG_TOPIC_PARTITION": "3"})


def test_a_malformed_value_is_an_error_that_names_it() -> None:
    with pytest.raises(ConfigurationError, match="RESULTLOG_TOPIC_PARTITIONS='many'"):
        Settings.from_env({"RESULTLOG_TOPIC_PARTITIONS": "many"})
    with pytest.raises(ConfigurationError, match="redis_url"):
        Settings.from_env({"RESULTLOG_REDIS_URL": "http://x"})
    with pytest.raises(ConfigurationError, match="result_ttl_s"):
        Settings(result_ttl_s=-1)


def test_min_insync_replicas_is_0_for_the_brokers_default_or_at_most_the_replication() -> None:
    assert Settings.from_env({}).topic_min_insync_replicas == 0
    s = Settings.from_env(
        {"RESULTLOG_TOPIC_REPLICATION_FACTOR": "3", "RESULTLOG_TOPIC_MIN_INSYNC_REPLICAS": "2"}
    )
    assert (s.topic_replication_factor, s.topic_min_insync_replicas) == (3, 2)
    with pytest.raises(ConfigurationError, match=r"topic_min_insync_replicas = 2 is invalid.*topic_replication_factor \(1\)"):
        Settings.from_env({"RESULTLOG_TOPIC_MIN_INSYNC_REPLICAS": "2"})
    with pytest.raises(ConfigurationError, match="topic_min_insync_replicas"):
        Settings(topic_min_insync_replicas=-1)


def test_the_local_stack_runs_one_kafka_node_or_three() -> None:
    assert Settings.from_env({}).dev_kafka_brokers == 1
    assert Settings.from_env({"RESULTLOG_DEV_KAFKA_BROKERS": "3"}).dev_kafka_brokers == 3
    with pytest.raises(ConfigurationError, match="RESULTLOG_DEV_KAFKA_BROKERS"):
        Settings.from_env({"RESULTLOG_DEV_KAFKA_BROKERS": "2"})


def test_the_processor_linger_is_0_to_1000_ms() -> None:
    assert Settings.from_env({}).processor_linger_ms == 0
    assert Settings.from_env({"RESULTLOG_PROCESSOR_LINGER_MS": "20"}).processor_linger_ms == 20
    for bad in ("-1", "1001"):
        with pytest.raises(ConfigurationError, match=r"processor_linger_ms.*0 \(fold at once\) to 1000"):
            Settings.from_env({"RESULTLOG_PROCESSOR_LINGER_MS": bad})


@pytest.mark.parametrize(("env", "message"), [
    ({"RESULTLOG_REDIS_URL": "redis://h:port/0"}, "redis_url = 'redis://h:port/0' is invalid: expected"),
    ({"RESULTLOG_REDIS_URL": "redis://h:70000/0"}, "redis_url = 'redis://h:70000/0' is invalid"),
    ({"RESULTLOG_REDIS_URL": "redis://h:6379/cache"}, "redis_url .* a database number"),
    ({"RESULTLOG_POSTGRES_DSN": "postgresql://u@h:0/db"}, "postgres_dsn .* port must be a number"),
    ({"RESULTLOG_KAFKA_BOOTSTRAP_SERVERS": "h:9092,h:99999"}, "kafka_bootstrap_servers .* each port"),
    ({"RESULTLOG_KAFKA_TIMEOUT_S": "nan"}, "kafka_timeout_s = nan is invalid: must be a finite number"),
    ({"RESULTLOG_ASSIGN_TIMEOUT_S": "inf"}, "assign_timeout_s = inf is invalid: must be a finite number"),
    ({"RESULTLOG_REDIS_TIMEOUT_S": "0"}, "redis_timeout_s = 0.0 is invalid: must be positive"),
    ({"RESULTLOG_REDIS_TIMEOUT_S": "inf"}, "redis_timeout_s = inf is invalid: must be a finite number"),
    # Names Kafka refuses only when the topic is created.
    ({"RESULTLOG_EVENTS_TOPIC": "."}, r"events_topic = '\.' is invalid: a Kafka topic name"),
    ({"RESULTLOG_EVENTS_TOPIC": ".."}, r"events_topic = '\.\.' is invalid: a Kafka topic name"),
])
def test_a_url_port_database_or_number_that_cannot_work_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize("url", [
    "redis://h:6379", "redis://h/", "rediss://u:p@h:6380/3?ssl_cert_reqs=none",
    "unix:///run/redis.sock?db=2",
])
def test_the_redis_urls_redis_py_takes_are_accepted(url: str) -> None:
    assert Settings.from_env({"RESULTLOG_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("dsn", [
    "postgresql://u:p@h1:5432,h2:5433/db", "postgresql://u@[::1]:5432/db",
    "postgresql:///db?host=/var/run/postgresql",
])
def test_the_postgres_dsns_libpq_takes_are_accepted(dsn: str) -> None:
    assert Settings.from_env({"RESULTLOG_POSTGRES_DSN": dsn}).postgres_dsn == dsn


def test_settings_made_in_code_are_checked_for_type() -> None:
    with pytest.raises(ConfigurationError, match=r"^setting redis_url must be a str, not int \(set RESULTLOG_REDIS_URL\)"):
        Settings(redis_url=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="topic_partitions must be an int, not str"):
        Settings(topic_partitions="8")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="metrics_port must be an int, not bool"):
        Settings(metrics_port=True)
    assert Settings(kafka_timeout_s=5).kafka_timeout_s == 5  # an int is a number of seconds too
    assert Settings.from_env({"RESULTLOG_REDIS_TIMEOUT_S": "1.5"}).redis_timeout_s == 1.5


def test_settings_given_is_the_settings_or_the_environments() -> None:
    s = Settings(consumer_group="g1")
    assert Settings.given(s, "X") is s
    assert Settings.given(None, "X") == Settings.from_env()


def test_every_entry_point_that_takes_settings_refuses_something_else_by_name() -> None:
    from resultlog.chicory_backend import ResultlogBackend
    from resultlog.producers import Emitter, SyncEmitter
    from resultlog.views import RedisView, ResultBackend
    from resultlog.views.analytics import Analytics
    from resultlog.views.history import HistoryStore

    for make in (Emitter, SyncEmitter, ResultBackend, HistoryStore, Analytics, RedisView,
                 ResultlogBackend):
        with pytest.raises(ConfigurationError,
                           match=rf"^{make.__name__}: settings must be resultlog Settings .* got str 'redis://h:6379/0'"):
            make("redis://h:6379/0")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="read_your_writes must be True or False, not 'false'"):
        ResultlogBackend(read_your_writes="false")  # type: ignore[arg-type]
    for bad in (-1, 1.5, "60", True):
        with pytest.raises(ConfigurationError, match="result_ttl must be None"):
            ResultlogBackend(result_ttl=bad)  # type: ignore[arg-type]
