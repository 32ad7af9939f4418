"""Throwaway TLS and node-authentication material for loopback tests, made with ``cryptography``.

Nothing here is committed or reused: every test run writes a fresh CA, a SuperLink certificate valid
for 127.0.0.1 and localhost only, and one EC key pair per SuperNode into its own temporary folder.
Production set-ups make these with their own PKI (docs/flower.md has the commands).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ServerCertificates:
    """``ca`` (the root certificate the SuperNodes and ``flwr`` trust), ``cert`` and ``key`` (the SuperLink's)."""

    ca: Path
    cert: Path
    key: Path


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def make_server_certificates(folder: Path, days: int = 1) -> ServerCertificates:
    """A self-signed CA and a server certificate it signs for 127.0.0.1/localhost (ECDSA P-256, SHA-256)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(minutes=5), not_valid_after=now + datetime.timedelta(days=days))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mpu test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid["not_valid_before"])
          .not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return ServerCertificates(
        ca=_write(folder / "ca.crt", ca.public_bytes(serialization.Encoding.PEM), 0o644),
        cert=_write(folder / "server.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644),
        key=_write(folder / "server.key", _pem_key(key)),
    )


def make_node_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's EC P-384 key pair in OpenSSH format (as ``ssh-keygen -t ecdsa -b 384 -N ""``):
    (private key for ``--auth-supernode-private-key``, public key for ``flwr supernode register``)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return _write(folder / name, private), _write(folder / f"{name}.pub", public + b"\n", 0o644)
