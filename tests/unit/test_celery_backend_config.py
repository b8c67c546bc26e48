"""The Celery backend's configuration: URL, Celery conf, RESULTLOG_*; bad input named."""

from __future__ import annotations

import importlib.util

from typing import Any

import pytest

from resultlog.errors import ConfigurationError

celery = pytest.importorskip("celery")

from resultlog.celery_backend import BackendConfig, ResultlogBackend  # noqa: E402
from resultlog.celery_backend.meta import event_state  # noqa: E402
from resultlog.schemas.states import State  # noqa: E402


def app(**conf: Any) -> Any:
    a = celery.Celery("config-tests", broker="memory://", set_as_current=False)
    a.conf.update(conf)
    return a


def test_the_url_query_wins_over_conf_which_wins_over_the_environment() -> None:
    config = BackendConfig.load(
        "resultlog://?redis_prefix=url:&ack_ready=false&import_modules=myapp,other",
        {"redis_prefix": "conf:", "events_topic": "conf.events"},
        {"RESULTLOG_EVENTS_TOPIC": "env.events", "RESULTLOG_CONSUMER_GROUP": "env-group"},
    )
    assert config.settings.redis_prefix == "url:"
    assert config.settings.events_topic == "conf.events"
    assert config.settings.consumer_group == "env-group"
    assert config.ack_ready is False
    assert config.import_modules == ("myapp", "other")


def test_plain_scheme_takes_everything_from_the_environment() -> None:
    config = BackendConfig.load("resultlog://", None, {"RESULTLOG_REDIS_PREFIX": "env:"})
    assert config.settings.redis_prefix == "env:" and config.ack_ready is True


@pytest.mark.parametrize(("url", "named"), [
    ("resultlog://?redis_prefx=x", "redis_prefx"),
    ("resultlog://?topic_partitions=many", "RESULTLOG_TOPIC_PARTITIONS"),
    ("resultlog://?ack_ready=maybe", "ack_ready"),
    ("resultlog://localhost:6379/0", "query"),
    ("resultlog://?events_topic=a&events_topic=b", "events_topic"),
])
def test_a_bad_url_is_an_error_naming_what_is_wrong(url: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        BackendConfig.load(url, None, {})


def test_the_entry_point_makes_the_scheme_the_whole_switch() -> None:
    backend = app(result_backend="resultlog://?redis_prefix=switch:").backend
    assert isinstance(backend, ResultlogBackend)
    assert backend.config.settings.redis_prefix == "switch:"


def test_pickle_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="pickle"):
        app(result_backend="resultlog://", result_serializer="pickle",
            accept_content=["pickle", "json"]).backend


def test_msgpack_and_yaml_are_accepted_and_an_unknown_serializer_is_refused() -> None:
    # yaml needs PyYAML installed, as with any Celery backend; msgpack is in the dev extra.
    names = ["msgpack"] + (["yaml"] if importlib.util.find_spec("yaml") else [])
    for name in names:
        assert isinstance(app(result_backend="resultlog://", result_serializer=name).backend,
                          ResultlogBackend)
    with pytest.raises(ConfigurationError, match="'cbor'.*json, msgpack, yaml"):
        app(result_backend="resultlog://", result_serializer="cbor").backend


def test_celery_states_map_onto_the_event_contract() -> None:
    assert event_state("SUCCESS") == (State.SUCCESS, False)
    assert event_state("REVOKED") == (State.REVOKED, False)
    assert event_state("STARTED") == (State.STARTED, True)  # keeps Celery's pid/hostname meta
    assert event_state("PROGRESS") == (State.STARTED, True)


def test_the_worker_heartbeat_interval_is_an_option_and_zero_turns_it_off() -> None:
    assert BackendConfig.load("resultlog://", env={}).worker_heartbeat_s == 2.0
    assert BackendConfig.load("resultlog://?worker_heartbeat_s=0.5", env={}).worker_heartbeat_s == 0.5
    assert BackendConfig.load("resultlog://?worker_heartbeat_s=0", env={}).worker_heartbeat_s == 0.0


@pytest.mark.parametrize("value", ["-1", "soon", "inf", "nan"])
def test_a_bad_worker_heartbeat_interval_is_named(value: str) -> None:
    with pytest.raises(ConfigurationError, match="worker_heartbeat_s"):
        BackendConfig.load(f"resultlog://?worker_heartbeat_s={value}", env={})


@pytest.mark.parametrize("value", ["1e10", "0.0000001", "0.09", "86401"])
def test_a_worker_heartbeat_interval_out_of_bounds_is_refused_in_the_url_and_the_conf(
        value: str) -> None:
    """1e10 s made a ttl_s past the record's int, so every beat failed (only a logged
    warning); 100 ns would have had the worker's timer beat without pause."""
    bounds = "must be 0 \\(off\\) or a number of seconds from 0.1 to 86400"
    with pytest.raises(ConfigurationError, match=f"worker_heartbeat_s='{value}' {bounds}"):
        BackendConfig.load(f"resultlog://?worker_heartbeat_s={value}", env={})
    with pytest.raises(ConfigurationError, match=f"worker_heartbeat_s=.* {bounds}"):
        BackendConfig.load("resultlog://", {"worker_heartbeat_s": float(value)}, {})
    # The bounds themselves are taken.
    for bound in (0.1, 86_400):
        assert BackendConfig.load("resultlog://", {"worker_heartbeat_s": bound}, {}
                                  ).worker_heartbeat_s == bound
        assert BackendConfig.load(f"resultlog://?worker_heartbeat_s={bound}", env={}
                                  ).worker_heartbeat_s == bound


@pytest.mark.parametrize(("conf", "named"), [
    ({"events_topic": None}, r"app.conf.resultlog\['events_topic'\] must be a str"),
    ({"redis_prefix": None}, r"app.conf.resultlog\['redis_prefix'\] must be a str"),
    ({"redis_prefix": 7}, r"app.conf.resultlog\['redis_prefix'\] must be a str"),
    ({"topic_partitions": True}, r"app.conf.resultlog\['topic_partitions'\] must be an int"),
    ({"kafka_timeout_s": [1]}, r"app.conf.resultlog\['kafka_timeout_s'\] must be a number"),
    ({"ack_ready": None}, r"app.conf.resultlog\['ack_ready'\] must be True or False"),
    ({"worker_heartbeat_s": None}, r"app.conf.resultlog\['worker_heartbeat_s'\] must be a number"),
    ({"import_modules": None}, r"app.conf.resultlog\['import_modules'\]: expected a list of module names"),
    ({"import_modules": ["proj", None]}, r"app.conf.resultlog\['import_modules'\]: each entry"),
    ({"import_modules": ("proj", b"x")}, r"app.conf.resultlog\['import_modules'\]: each entry"),
])
def test_a_conf_value_of_the_wrong_kind_is_named_not_turned_into_text(
        conf: dict[str, Any], named: str) -> None:
    """str() of None was a topic (or prefix, or module) named 'None'."""
    with pytest.raises(ConfigurationError, match=named):
        BackendConfig.load("resultlog://", conf, {})


def test_a_secret_of_the_wrong_kind_is_not_printed() -> None:
    with pytest.raises(ConfigurationError, match="kafka_sasl_password'\\] must be a str") as raised:
        BackendConfig.load("resultlog://", {"kafka_sasl_password": 12345678}, {})
    assert "12345678" not in str(raised.value)


@pytest.mark.parametrize("conf", ["events_topic=x", ["events_topic"], 3])
def test_a_conf_that_is_no_mapping_is_refused(conf: Any) -> None:
    with pytest.raises(ConfigurationError, match="app.conf.resultlog must be a mapping"):
        BackendConfig.load("resultlog://", conf, {})
    with pytest.raises(ConfigurationError, match="app.conf.resultlog must be a mapping"):
        app(result_backend="resultlog://", resultlog=conf).backend


@pytest.mark.parametrize("url", [123, b"resultlog://", ["resultlog://"]])
def test_a_url_that_is_no_str_is_refused(url: Any) -> None:
    with pytest.raises(ConfigurationError, match="result_backend must be a resultlog:// URL string"):
        BackendConfig.load(url, None, {})


def test_conf_values_may_be_given_as_python_values_or_as_text() -> None:
    config = BackendConfig.load("resultlog://", {
        "topic_partitions": 4, "kafka_timeout_s": 3, "ack_ready": False, "read_your_writes": 0,
        "worker_heartbeat_s": 0.5, "kafka_bootstrap_servers": ["h1:9092", "h2:9092"],
        "import_modules": ("proj", "other.tasks"), "events_topic": "conf.events"}, {})
    assert (config.settings.topic_partitions, config.settings.kafka_timeout_s) == (4, 3.0)
    assert (config.ack_ready, config.read_your_writes, config.worker_heartbeat_s) == (False, False, 0.5)
    assert config.settings.kafka_bootstrap_servers == "h1:9092,h2:9092"
    assert config.import_modules == ("proj", "other.tasks")
    # Text, as the URL gives it: import_modules comma-separated.
    config = BackendConfig.load("resultlog://", {"import_modules": "proj, other", "ack_ready": "no"}, {})
    assert config.import_modules == ("proj", "other") and config.ack_ready is False
    with pytest.raises(ConfigurationError, match="import_modules: each entry"):
        BackendConfig.load("resultlog://?import_modules=proj,my+app", None, {})

