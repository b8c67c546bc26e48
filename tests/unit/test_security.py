"""Security settings, the connection arguments made from them, and redaction."""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resultlog.connections import (
    faust_broker_credentials,
    kafka_client_args,
    postgres_dsn,
    redis_url,
)
from resultlog.devstack.certs import ensure_certificates
from resultlog.devstack.kafka import broker_config
from resultlog.devstack.secure import (
    kafka_format_arguments,
    kafka_listener_config,
    postgres_hba,
    redis_config_lines,
    secure_settings,
)
from resultlog.errors import ConfigurationError, DevStackError
from resultlog.redaction import MASK, redact_text, redact_url
from resultlog.settings import Settings

SASL = {"RESULTLOG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RESULTLOG_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "RESULTLOG_KAFKA_SASL_USERNAME": "alice", "RESULTLOG_KAFKA_SASL_PASSWORD": "s3cret-pw"}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_certificates(tmp_path_factory.mktemp("tls")).directory


# -- settings -------------------------------------------------------------------------


def test_security_settings_take_kafkas_names_and_values() -> None:
    s = Settings.from_env(SASL)
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert s.kafka_uses_ssl and s.kafka_uses_sasl
    with pytest.raises(ConfigurationError, match="RESULTLOG_KAFKA_SECURITY_PROTOCOL"):
        Settings.from_env({"RESULTLOG_KAFKA_SECURITY_PROTOCOL": "TLS"})
    with pytest.raises(ConfigurationError, match="RESULTLOG_KAFKA_SASL_MECHANISM"):
        Settings.from_env({**SASL, "RESULTLOG_KAFKA_SASL_MECHANISM": "GSSAPI"})
    with pytest.raises(ConfigurationError, match="RESULTLOG_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM"):
        Settings.from_env({"RESULTLOG_KAFKA_SECURITY_PROTOCOL": "SSL",
                           "RESULTLOG_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "http"})


def test_settings_that_would_be_ignored_are_errors() -> None:
    with pytest.raises(ConfigurationError, match="required with security.protocol SASL_SSL .set RESULTLOG_KAFKA_SASL_PASSWORD"):
        Settings.from_env({**SASL, "RESULTLOG_KAFKA_SASL_PASSWORD": ""})
    with pytest.raises(ConfigurationError, match="RESULTLOG_KAFKA_SASL_USERNAME"):
        Settings(kafka_sasl_username="alice")  # PLAINTEXT: would be ignored
    with pytest.raises(ConfigurationError, match="RESULTLOG_KAFKA_SSL_CA_LOCATION"):
        Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="a",
                 kafka_sasl_password="b", kafka_ssl_ca_location="/ca.pem")
    with pytest.raises(ConfigurationError, match="RESULTLOG_KAFKA_SSL_KEY_LOCATION"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_certificate_location="/c.pem")
    with pytest.raises(ConfigurationError, match="use rediss://"):
        Settings(redis_url="redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem")
    with pytest.raises(ConfigurationError, match="sslmode='verify_full'"):
        Settings(postgres_dsn="postgresql://u:p@h:5432/d?sslmode=verify_full")


def test_an_invalid_setting_never_prints_its_secret() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings(kafka_sasl_password="hunter2")
    assert "hunter2" not in str(raised.value) and MASK in str(raised.value)
    with pytest.raises(ConfigurationError) as raised:
        Settings(redis_url="redis://u:hunter2@h:1/0?ssl_ca_certs=/x")
    assert "hunter2" not in str(raised.value)


def test_repr_of_settings_hides_every_secret_and_to_env_keeps_them() -> None:
    s = Settings.from_env({**SASL, "RESULTLOG_REDIS_URL": "rediss://bob:r3dis-pw@h:6380/0",
                           "RESULTLOG_POSTGRES_DSN": "postgresql://carol:pg-pw@h:5432/d?sslmode=require"})
    shown = repr(s) + str(s)
    for secret in ("s3cret-pw", "r3dis-pw", "pg-pw"):
        assert secret not in shown
    assert "bob:***@" in shown and "carol:***@" in shown and "alice" in shown
    assert Settings.from_env(s.to_env()) == s


@given(user=st.text(min_size=1, max_size=8), password=st.text(min_size=1, max_size=20),
       param=st.sampled_from(["password", "sslpassword", "PASSWORD"]))
def test_a_redacted_url_holds_a_mask_where_the_password_was_and_nothing_else_changes(
    user: str, password: str, param: str
) -> None:
    url = f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@db:5432/x?sslmode=require"
    for candidate in (url, f"{url}&{param}={quote(password, safe='')}"):
        redacted = urlsplit(redact_url(candidate))
        original = urlsplit(candidate)
        assert redacted.password == MASK and redacted.username == original.username
        assert (redacted.hostname, redacted.port, redacted.path) == ("db", 5432, "/x")
        query = parse_qsl(redacted.query)
        assert query[0] == ("sslmode", "require")
        assert all(v == MASK for k, v in query[1:]) and len(query) == len(parse_qsl(original.query))


@given(st.sampled_from(["redis://h:6379/0", "rediss://h:1/0?ssl_ca_certs=/a/ca.pem", "postgresql://u@h/d"]))
def test_a_url_without_secrets_is_unchanged(url: str) -> None:
    assert redact_url(url) == url


def test_redact_text_masks_the_longest_secret_first() -> None:
    assert redact_text("pw=abcdef and abc", ["abc", "abcdef"]) == "pw=*** and ***"
    assert redact_text("nothing", [""]) == "nothing"


# -- connection arguments -------------------------------------------------------------


def test_plaintext_kafka_gets_no_security_arguments() -> None:
    assert kafka_client_args(Settings()) == {"bootstrap_servers": "127.0.0.1:19092",
                                             "security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(Settings()) is None


def test_sasl_ssl_gives_every_client_the_same_login_and_a_verifying_context(ca: Path) -> None:
    s = Settings.from_env({**SASL, "RESULTLOG_KAFKA_SSL_CA_LOCATION": str(ca / "ca.pem")})
    args = kafka_client_args(s, "k1:9093,k2:9093")
    assert args["bootstrap_servers"] == "k1:9093,k2:9093"
    assert (args["security_protocol"], args["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (args["sasl_plain_username"], args["sasl_plain_password"]) == ("alice", "s3cret-pw")
    context: ssl.SSLContext = args["ssl_context"]
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    creds = faust_broker_credentials(s)
    assert (creds.protocol.value, creds.mechanism.value, creds.username) == ("SASL_SSL", "SCRAM-SHA-512", "alice")
    off = s.replace(kafka_ssl_endpoint_identification_algorithm="none")
    assert not kafka_client_args(off)["ssl_context"].check_hostname


def test_a_client_certificate_is_loaded_and_a_bad_one_names_its_setting(ca: Path) -> None:
    s = Settings(kafka_security_protocol="SSL", kafka_ssl_ca_location=str(ca / "ca.pem"),
                 kafka_ssl_certificate_location=str(ca / "client.pem"), kafka_ssl_key_location=str(ca / "client.key"))
    assert "sasl_mechanism" not in kafka_client_args(s)
    assert faust_broker_credentials(s).protocol.value == "SSL"
    mismatched = s.replace(kafka_ssl_key_location=str(ca / "server.key"))
    with pytest.raises(ConfigurationError, match="RESULTLOG_KAFKA_SSL_CERTIFICATE_LOCATION"):
        kafka_client_args(mismatched)
    with pytest.raises(ConfigurationError, match="RESULTLOG_KAFKA_SSL_CA_LOCATION.*does not exist"):
        kafka_client_args(s.replace(kafka_ssl_ca_location=str(ca / "missing.pem")))


def test_store_urls_are_checked_for_the_files_they_name(ca: Path) -> None:
    good = Settings(redis_url=f"rediss://u:p@h:1/0?ssl_ca_certs={ca}/ca.pem",
                    postgres_dsn=f"postgresql://u:p@h:1/d?sslmode=verify-full&sslrootcert={ca}/ca.pem")
    assert redis_url(good) == good.redis_url and postgres_dsn(good) == good.postgres_dsn
    with pytest.raises(ConfigurationError, match="RESULTLOG_REDIS_URL \\(its ssl_certfile\\)"):
        redis_url(good.replace(redis_url=f"rediss://h:1/0?ssl_certfile={ca}/nope.pem"))
    with pytest.raises(ConfigurationError, match="RESULTLOG_POSTGRES_DSN \\(its sslrootcert\\)"):
        postgres_dsn(good.replace(postgres_dsn="postgresql://h:1/d?sslmode=verify-ca&sslrootcert=/nope"))


# -- the secure local stack's server side ---------------------------------------------


def test_the_secure_stack_serves_what_its_settings_ask_for(tmp_path: Path) -> None:
    s = secure_settings(Settings(dev_dir=str(tmp_path)))
    assert s.kafka_ssl_ca_location == str(tmp_path.absolute() / "tls" / "ca.pem")
    config = broker_config(port=21000, controller_port=21001, data_dir=tmp_path)
    config.update(kafka_listener_config(s, 21000, 21001))
    assert config["listeners"] == "SASL_SSL://127.0.0.1:21000,CONTROLLER://127.0.0.1:21001"
    assert config["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    assert config["inter.broker.listener.name"] == "SASL_SSL"
    assert "SCRAM-SHA-512" in config["sasl.enabled.mechanisms"].split(",")
    scram = [a for a in kafka_format_arguments(s) if a.startswith("SCRAM-SHA-512=[name=resultlog,")]
    assert scram == [f"SCRAM-SHA-512=[name=resultlog,password={s.kafka_sasl_password}]"]
    redis_conf = redis_config_lines(s, 21002)
    assert "port 0" in redis_conf and "tls-port 21002" in redis_conf and "tls-auth-clients yes" in redis_conf
    assert "user default off" in redis_conf
    assert "hostnossl all all 0.0.0.0/0 reject" in postgres_hba(s)
    plain = Settings(dev_dir=str(tmp_path))
    assert kafka_listener_config(plain, 21000, 21001) == {} and kafka_format_arguments(plain) == []
    assert redis_config_lines(plain, 21002) == ["port 21002"]
    assert "hostssl" not in postgres_hba(plain)


def test_the_secure_stack_refuses_a_client_user_its_brokers_log_in_as(tmp_path: Path) -> None:
    s = secure_settings(Settings(dev_dir=str(tmp_path))).replace(kafka_sasl_username="admin")
    for build in (lambda: kafka_listener_config(s, 21000, 21001), lambda: kafka_format_arguments(s)):
        with pytest.raises(DevStackError, match="RESULTLOG_KAFKA_SASL_USERNAME"):
            build()
