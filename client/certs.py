"""Reading and checking a kit's certificates and keys — on a node as on the coordinator.

What each party checks before anything starts (the kits are made by
`federator.server.deploy.provision`): a private key only its owner can read, the CA
certificate (a self-signed CA, valid now), certificates issued by it, and node keys in the
OpenSSH ECDSA form Flower's node authentication reads, on a NIST curve. Each check raises a
`ConfigError` naming the file and the problem; time is passed in, so validity windows can
be tested.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from federator import ConfigError

#: Curves accepted for node keys: NIST P-256/384/521. Flower also takes P-192/224, which are
#: below today's security floor (NIST SP 800-57 Part 1 Rev. 5), so a kit refuses them.
NIST_CURVES: tuple[type[ec.EllipticCurve], ...] = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the certificate's DER encoding (what a person compares by phone)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def check_private_mode(path: Path) -> None:
    """Refuse a private key that its group or others may read or write."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"{path}: private key is accessible to group/others (mode {mode:03o}); "
            f"run: chmod 600 {path}"
        )


def load_cert(path: Path) -> x509.Certificate:
    """The PEM certificate at ``path``."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the certificate ({err.strerror})") from None
    except ValueError as err:
        raise ConfigError(f"{path}: not a PEM certificate ({err})") from None


def check_validity(cert: x509.Certificate, path: Path, *, now: datetime) -> None:
    """Refuse a certificate that is expired or not yet valid at ``now``."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        raise ConfigError(
            f"{path}: certificate is not valid before {start.isoformat()} "
            f"(now {now.isoformat()}); check this machine's clock"
        )
    if now > end:
        raise ConfigError(f"{path}: certificate expired on {end.isoformat()}; provision new kits")


def check_ca(cert: x509.Certificate, path: Path) -> None:
    """Refuse a certificate that is not a self-signed CA."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ConfigError(f"{path}: not a CA certificate (basicConstraints cA is not set)")
    check_issued_by(cert, cert, path, issuer_path=path)


def check_issued_by(
    cert: x509.Certificate, ca: x509.Certificate, path: Path, *, issuer_path: Path
) -> None:
    """Refuse ``cert`` unless ``ca`` signed it (issuer name and signature, RFC 5280 §6.1.3)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise ConfigError(
            f"{path}: certificate was not issued by the kit's CA {issuer_path} "
            "(wrong CA, or files from different kits)"
        ) from None


def _check_curve(key: ec.EllipticCurvePublicKey, path: Path) -> None:
    if not isinstance(key.curve, NIST_CURVES):
        raise ConfigError(
            f"{path}: ECDSA key on curve {key.curve.name}; Flower needs a NIST curve "
            "(P-256, P-384 or P-521)"
        )


def load_node_private(path: Path) -> ec.EllipticCurvePrivateKey:
    """A node's OpenSSH ECDSA private key on a NIST curve, as Flower's SuperNode loads it."""
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the node key ({err.strerror})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ConfigError(
            f"{path}: not an unencrypted OpenSSH private key ({err}); "
            "Flower's node authentication needs OpenSSH ECDSA"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: expected an ECDSA node key, got {type(key).__name__}")
    _check_curve(key.public_key(), path)
    return key


def load_node_public(path: Path) -> ec.EllipticCurvePublicKey:
    """A node's OpenSSH ECDSA public key (NIST curve), as ``flwr supernode register`` reads it."""
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the node public key ({err.strerror})") from None
    except (ValueError, UnsupportedAlgorithm) as err:
        raise ConfigError(f"{path}: not an OpenSSH public key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{path}: expected an ECDSA public key, got {type(key).__name__}")
    _check_curve(key, path)
    return key


def same_public_key(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    """Whether two public keys are the same key (compared as DER SubjectPublicKeyInfo)."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


__all__ = [
    "NIST_CURVES",
    "check_ca",
    "check_issued_by",
    "check_private_mode",
    "check_validity",
    "fingerprint",
    "load_cert",
    "load_node_private",
    "load_node_public",
    "same_public_key",
]
