"""Certificates and keys for deployment kits, made with ``cryptography`` (the checks both
parties make when loading a kit are `federator.client.certs`).

Flower 1.42 secures a deployment with two independent mechanisms, and a kit carries both:

- **TLS** (RFC 8446) between SuperNodes and the SuperLink: the SuperLink presents a server
  certificate issued by the federation's own CA; a SuperNode trusts only that CA
  (``--root-certificates``). The certificate names the coordinator's host in its
  subjectAltName (RFC 5280 §4.2.1.6), which is what the node's TLS stack checks.
- **Node authentication**: each SuperNode signs its requests with an ECDSA key
  (FIPS 186-5) that the SuperLink must know in advance (``flwr supernode register``). Flower
  reads these keys in OpenSSH format and accepts only NIST curves; we use P-384.

All keys come from the operating system's CSPRNG (``cryptography``'s default), never from an
injectable generator: a reproducible key is a leaked key. Time, on the other hand, is passed
in so that validity windows can be tested.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federator import ConfigError

#: Certificates start this long before "now", so a machine whose clock lags a little still
#: accepts them (a freshly provisioned kit must not be "not yet valid" on a partner's server).
BACKDATE = timedelta(minutes=5)

_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-384 key (for the CA, the server and the nodes alike)."""
    return ec.generate_private_key(ec.SECP384R1())


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IPv4/IPv6 literal (rather than a DNS name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_dns_name(host: str) -> bool:
    """Whether ``host`` is a lower-case DNS name (RFC 1123 labels, at most 253 characters)."""
    return len(host) <= 253 and all(_DNS_LABEL.match(label) for label in host.split("."))


def _general_name(value: str) -> x509.GeneralName:
    if is_ip(value):
        return x509.IPAddress(ipaddress.ip_address(value))
    return x509.DNSName(value)


def _org(federation: str) -> x509.NameAttribute[str]:
    return x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation[:64])


def new_ca(
    key: ec.EllipticCurvePrivateKey, *, federation: str, now: datetime, days: int
) -> x509.Certificate:
    """A self-signed CA certificate that may sign end-entity certificates only
    (``pathLenConstraint`` 0, RFC 5280 §4.2.1.9)."""
    name = x509.Name(
        [_org(federation), x509.NameAttribute(NameOID.COMMON_NAME, "Federator federation CA")]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )


def new_server_cert(
    key: ec.EllipticCurvePrivateKey,
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    federation: str,
    names: Sequence[str],
    now: datetime,
    days: int,
) -> x509.Certificate:
    """The SuperLink's TLS certificate for ``names`` (DNS names or IP literals), issued by the
    CA, for server authentication only; it never outlives the CA."""
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [_org(federation), x509.NameAttribute(NameOID.COMMON_NAME, "Federator coordinator")]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )


# --------------------------------------------------------------------------------------------
# Encodings


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: the SuperLink reads it unattended (the file is 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def openssh_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The node key as Flower's ``--auth-supernode-private-key`` reads it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def openssh_public(key: ec.EllipticCurvePublicKey, *, comment: str) -> bytes:
    """``ecdsa-sha2-nistp384 AAAA… comment``, as ``flwr supernode register`` reads it."""
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + b" " + comment.encode() + b"\n"


def san_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


# --------------------------------------------------------------------------------------------
# Coordinator-only checks (the shared ones are `federator.client.certs`'s)


def load_ec_private_pem(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the private key ({err.strerror})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: expected an ECDSA key, got {type(key).__name__}")
    return key
