"""TLS contexts for hpcrag's servers and clients: TLS 1.2 or newer, and errors that name the file.

`server_context` loads a certificate chain and its key (and, given a client CA, requires every client
to present a certificate it signed); `client_context` verifies the server against a CA file (or the
system's CAs) and may present a client certificate. A missing or unreadable file, or a key that does
not belong to the certificate, is an HpcragError naming the file and the fix, never an ssl traceback.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from hpcrag.errors import HpcragError


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server context for `cert` (a PEM chain) and `key`; `client_ca` makes client certificates
    signed by that CA required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, Path(cert), Path(key), "--tls-cert", "--tls-key")
    if client_ca is not None:
        _load_ca(context, Path(client_ca), "--tls-client-ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context that verifies the server (against `ca`, else the system's CAs), optionally
    presenting the client certificate `cert` with its `key`."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _load_ca(context, Path(ca), "the CA file")
    if (cert is None) != (key is None):
        raise HpcragError("a client certificate needs both its certificate file and its key file")
    if cert is not None and key is not None:
        _load_chain(context, Path(cert), Path(key), "the client certificate", "the client key")
    return context


def _readable(path: Path, role: str) -> None:
    if not path.is_file():
        raise HpcragError(f"{role} {path} does not exist; give the path of a PEM file")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise HpcragError(f"{role} {path} cannot be read ({exc.strerror}); check its permissions") from None


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path, cert_role: str, key_role: str) -> None:
    _readable(cert, cert_role)
    _readable(key, key_role)
    try:
        context.load_cert_chain(cert, key, password=_no_password(key, key_role))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise HpcragError(
                f"{key_role} {key} does not belong to {cert_role} {cert}; give the key the certificate was "
                "made for"
            ) from None
        raise HpcragError(
            f"{cert_role} {cert} or {key_role} {key} is not a PEM certificate chain and an unencrypted "
            f"PEM private key ({exc.reason or exc}); convert them with openssl"
        ) from None


def _no_password(key: Path, key_role: str) -> Callable[[], bytes]:
    """Called only for an encrypted key: a service has no one to type the passphrase."""

    def refuse() -> bytes:
        raise HpcragError(
            f"{key_role} {key} is encrypted; give an unencrypted key (openssl pkey -in KEY -out PLAIN.key) "
            "readable only by you"
        )

    return refuse


def _load_ca(context: ssl.SSLContext, ca: Path, role: str) -> None:
    _readable(ca, role)
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise HpcragError(
            f"{role} {ca} holds no PEM CA certificate ({exc.reason or exc}); give the CA's PEM file"
        ) from None
