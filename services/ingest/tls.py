"""TLS for the broker connection: one SSLContext built at start-up, and plain-words
explanations of the handshake errors operators actually meet.

The context is built while the config loads, so a missing CA, a key that does not match
its certificate or an encrypted key without a password stops ingest at start-up with one
line naming the variable. OpenSSL would otherwise ask for the key's password on the
terminal, which hangs a supervised service (RELIABILITY.md §3).
"""

from __future__ import annotations

import ssl

from shared.config import ConfigError


class _NoKeyPassword(Exception):
    pass


def _refuse_prompt() -> str:
    # Called by OpenSSL only when the key is encrypted; raising here replaces its tty prompt.
    raise _NoKeyPassword()


def build_context(
    ca: str | None,
    cert: str | None,
    key: str | None,
    key_password: str,
    insecure: bool,
) -> ssl.SSLContext:
    """A client context: TLS >= 1.2, the broker's certificate verified against ``ca`` (the
    system store when None) and, unless ``insecure``, its name checked against MQTT_BROKER."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"MQTT_TLS_CA={ca}: cannot load CA certificates ({exc})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False  # the certificate chain is still verified
    if cert:
        try:
            context.load_cert_chain(cert, key, password=key_password or _refuse_prompt)
        except _NoKeyPassword:
            raise ConfigError(
                f"MQTT_TLS_KEY={key or cert}: the private key is encrypted; "
                "set MQTT_TLS_KEY_PASSWORD"
            ) from None
        except ssl.SSLError as exc:
            if key_password and "PEM lib" in str(exc):
                raise ConfigError(
                    f"MQTT_TLS_KEY_PASSWORD does not decrypt MQTT_TLS_KEY={key or cert}"
                ) from None
            raise ConfigError(
                f"MQTT_TLS_CERT={cert} / MQTT_TLS_KEY={key}: cannot load the client "
                f"certificate and key ({exc.reason or exc})"
            ) from None
        except OSError as exc:
            raise ConfigError(f"MQTT_TLS_CERT={cert}: {exc.strerror or exc}") from None
    return context


def explain(exc: BaseException, host: str, ca_given: bool = True) -> str:
    """One line saying what went wrong in a TLS handshake and what to check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or str(exc)
        if "mismatch" in detail.lower():
            return (
                f"TLS: the broker's certificate is not valid for {host!r} ({detail}); "
                "MQTT_BROKER must be a name (or IP) listed in the certificate"
            )
        fix = (
            "is MQTT_TLS_CA the CA that signed it?"
            if ca_given
            else "set MQTT_TLS_CA to the CA that signed it"
        )
        return f"TLS: the broker's certificate is not trusted ({detail}); {fix}"
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake failed ({exc.reason or exc}); is MQTT_PORT the broker's TLS "
            "listener, and does the broker accept this client certificate?"
        )
    return f"TLS: {exc}"
