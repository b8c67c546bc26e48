"""The local stack served the way the settings ask to connect: TLS, SASL, ACL users.

The stack reads the *client* settings and configures each server to match, so one set
of ``RESULTLOG_*`` variables describes both sides; what each server then requires:
docs/operations.md, "The secure local stack". Certificates come from
:mod:`resultlog.devstack.certs`, in ``<dev_dir>/tls``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from resultlog.devstack.certs import Certificates, ensure_certificates
from resultlog.errors import DevStackError
from resultlog.settings import Settings

TLS_DIR = "tls"
# The user brokers authenticate as to each other (SASL listeners only).
INTER_BROKER_USER = "admin"
INTER_BROKER_MECHANISM = "SCRAM-SHA-512"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
# The ``admin`` user's password, made once per state directory and kept: the SCRAM
# credential formatted into each node's storage must keep matching it.
_SECRET_FILE = "kafka-admin.secret"
# The password of the user `resultlog dev up --secure` makes (the same for all three).
PASSWORD_FILE = "password"
TLS_SSLMODES = ("require", "verify-ca", "verify-full")


def certificates(settings: Settings) -> Certificates:
    return Certificates(Path(settings.dev_dir).absolute() / TLS_DIR)


def redis_secure(settings: Settings) -> bool:
    return urlsplit(settings.redis_url).scheme == "rediss"


def postgres_secure(settings: Settings) -> bool:
    return dict(parse_qsl(urlsplit(settings.postgres_dsn).query)).get("sslmode") in TLS_SSLMODES


def prepare_certificates(settings: Settings) -> Certificates | None:
    """The stack's CA and certificates, made once, if any service serves TLS."""
    if not (settings.kafka_uses_ssl or redis_secure(settings) or postgres_secure(settings)):
        return None
    return ensure_certificates(certificates(settings).directory)


# -- Kafka ----------------------------------------------------------------------------


def kept_secret(settings: Settings, name: str) -> str:
    """A random password in ``<dev_dir>/tls/<name>`` (mode 0600), made on first use."""
    path = certificates(settings).directory / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(path.name + ".new")
        draft.write_text(secrets.token_urlsafe(24) + "\n")
        draft.chmod(0o600)
        draft.replace(path)
    return path.read_text().strip()


def _jaas(module: str, username: str, password: str, extra: str = "") -> str:
    return f'{module} required username="{username}" password="{password}"{extra};'


def kafka_listener_config(settings: Settings, port: int, controller_port: int) -> dict[str, str]:
    """The broker properties that replace its PLAINTEXT listener with the settings'
    protocol; empty for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    listener = protocol.lower()
    config = {
        "listeners": f"{protocol}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"{protocol}://127.0.0.1:{port}",
        "inter.broker.listener.name": protocol,
        "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{protocol}:{protocol}",
    }
    if settings.kafka_uses_ssl:
        certs = certificates(settings)
        config.update({
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(certs.server_bundle),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(certs.ca),
            # A client certificate is checked when one is given; SASL is what authenticates.
            "ssl.client.auth": "requested",
        })
    if settings.kafka_uses_sasl:
        admin = kept_secret(settings, _SECRET_FILE)
        user, password = _sasl_login(settings)
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        config.update({
            "sasl.enabled.mechanisms": ",".join(("PLAIN", *SCRAM_MECHANISMS)),
            "sasl.mechanism.inter.broker.protocol": INTER_BROKER_MECHANISM,
            f"listener.name.{listener}.plain.sasl.jaas.config": _jaas(
                plain, INTER_BROKER_USER, admin,
                f' user_{INTER_BROKER_USER}="{admin}" user_{user}="{password}"'),
        })
        for mechanism in SCRAM_MECHANISMS:
            config[f"listener.name.{listener}.{mechanism.lower()}.sasl.jaas.config"] = _jaas(
                scram, INTER_BROKER_USER, admin)
    return config


def _sasl_login(settings: Settings) -> tuple[str, str]:
    """The settings' SASL user and password, if the local stack's brokers can take them."""
    user, password = settings.kafka_sasl_username, settings.kafka_sasl_password
    for value in (user, password):
        if '"' in value or "\\" in value:
            raise DevStackError(
                "kafka: the local stack cannot put a SASL user name or password containing "
                "'\"' or '\\' into its JAAS configuration; choose another "
                "RESULTLOG_KAFKA_SASL_USERNAME / RESULTLOG_KAFKA_SASL_PASSWORD"
            )
    if user == INTER_BROKER_USER:
        # The brokers' own login: one user with two passwords would lock one side out.
        raise DevStackError(
            f"kafka: the local stack's brokers log in to each other as {INTER_BROKER_USER!r}; "
            "choose another RESULTLOG_KAFKA_SASL_USERNAME")
    return user, password


def kafka_secrets(settings: Settings) -> list[str]:
    """The passwords :func:`kafka_format_arguments` puts on a command line (to mask in logs)."""
    if not settings.kafka_uses_sasl:
        return []
    return [kept_secret(settings, _SECRET_FILE), settings.kafka_sasl_password]


def kafka_format_arguments(settings: Settings) -> list[str]:
    """``StorageTool format`` arguments storing the SCRAM credentials (KIP-900): the
    brokers' ``admin`` and the settings' user, for both SCRAM mechanisms."""
    if not settings.kafka_uses_sasl:
        return []
    user, password = _sasl_login(settings)
    users = {INTER_BROKER_USER: kept_secret(settings, _SECRET_FILE), user: password}
    args: list[str] = []
    for user, password in users.items():
        for mechanism in SCRAM_MECHANISMS:
            args += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
    return args


# -- Redis ----------------------------------------------------------------------------


def redis_config_lines(settings: Settings, port: int) -> list[str]:
    """redis.conf lines for the port, TLS and the user."""
    url = urlsplit(settings.redis_url)
    password = url.password
    lines = []
    if redis_secure(settings):
        certs = certificates(settings)
        wants_client_cert = "ssl_certfile" in dict(parse_qsl(url.query))
        lines += [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {certs.server_cert}",
            f"tls-key-file {certs.server_key}",
            f"tls-ca-cert-file {certs.ca}",
            f"tls-auth-clients {'yes' if wants_client_cert else 'no'}",
        ]
    else:
        lines.append(f"port {port}")
    if url.username and password:
        lines += ["user default off", f"user {url.username} on >{password} ~* &* +@all"]
    elif password:
        lines.append(f"requirepass {password}")
    return lines


# -- PostgreSQL -----------------------------------------------------------------------


def postgres_hba(settings: Settings) -> str:
    """pg_hba.conf: the local socket trusted; TCP with scram-sha-256, TLS only if secure."""
    tcp = (["hostssl all all 127.0.0.1/32 scram-sha-256", "hostnossl all all 0.0.0.0/0 reject"]
           if postgres_secure(settings) else ["host all all 127.0.0.1/32 scram-sha-256"])
    return "\n".join(["# Written by `resultlog dev up` on every start; edits are overwritten.",
                      "local all all trust", *tcp, ""])


def postgres_ssl_lines(settings: Settings, key_dir: Path) -> list[str]:
    """postgresql.conf lines turning TLS on; the certificate and key are copied into
    ``key_dir`` (PostgreSQL wants its key owned by the server's user, mode 0600)."""
    if not postgres_secure(settings):
        return ["ssl = off"]
    return [
        "ssl = on",
        f"ssl_cert_file = '{key_dir / 'server.pem'}'",
        f"ssl_key_file = '{key_dir / 'server.key'}'",
        f"ssl_ca_file = '{key_dir / 'ca.pem'}'",
    ]


# -- settings -------------------------------------------------------------------------


def secure_settings(
    base: Settings, *, user: str = "resultlog", mechanism: str = "SCRAM-SHA-512", password: str | None = None,
) -> Settings:
    """``base`` asking for TLS and authentication everywhere, trusting the CA in
    ``<base.dev_dir>/tls``: Kafka SASL_SSL, Redis ``rediss://`` as an ACL user with a
    client certificate, PostgreSQL ``sslmode=verify-full``. ``password``: the user's in
    all three (default: a new random one)."""
    certs = certificates(base)
    password = secrets.token_urlsafe(18) if password is None else password
    redis = urlsplit(base.redis_url)
    redis_query = urlencode({"ssl_ca_certs": str(certs.ca), "ssl_certfile": str(certs.client_cert),
                             "ssl_keyfile": str(certs.client_key)}, safe="/")
    redis_url = urlunsplit(("rediss", f"{quote(user)}:{quote(password)}@{redis.hostname}:{redis.port}",
                            redis.path or "/0", redis_query, ""))
    pg = urlsplit(base.postgres_dsn)
    pg_query = urlencode({"sslmode": "verify-full", "sslrootcert": str(certs.ca)}, safe="/")
    postgres_dsn = urlunsplit((pg.scheme, f"{quote(user)}:{quote(password)}@{pg.hostname}:{pg.port}",
                               pg.path, pg_query, ""))
    return base.replace(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username=user,
        kafka_sasl_password=password,
        kafka_ssl_ca_location=str(certs.ca),
        redis_url=redis_url,
        postgres_dsn=postgres_dsn,
    )


def dev_secure_settings(base: Settings) -> Settings:
    """:func:`secure_settings` for ``resultlog dev up --secure``: the password is kept in
    ``<dev_dir>/tls/password``, so every later command finds the same one."""
    return secure_settings(base, password=kept_secret(base, PASSWORD_FILE))


def exports(settings: Settings) -> list[str]:
    """Shell lines exporting the security settings of ``settings`` made by
    :func:`dev_secure_settings`; the password is read from its file, never printed."""
    password = kept_secret(settings, PASSWORD_FILE)
    from_file = f"$(cat {certificates(settings).directory / PASSWORD_FILE})"
    names = ("kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
             "kafka_sasl_password", "kafka_ssl_ca_location", "redis_url", "postgres_dsn")
    env = settings.to_env()
    lines = []
    for name in names:
        key = "RESULTLOG_" + name.upper()
        lines.append(f'export {key}="{env[key].replace(password, from_file)}"')
    return lines
