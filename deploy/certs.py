"""`inzwa certs`: a self-signed certificate for trying the page from another device on the LAN.

Browsers give a page the microphone only on `https://` (or `http://localhost`), so a phone or a
second laptop needs the gateway on HTTPS. This writes a key and a certificate whose names cover
localhost, this machine's host name and its LAN addresses; the person accepts the warning once
on the other device. It is for a trial: a real deployment uses a certificate from a CA.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CERT_NAME = "inzwa-cert.pem"
KEY_NAME = "inzwa-key.pem"
# An address from TEST-NET-1 (RFC 5737): "connecting" a UDP socket to it sends nothing but makes
# the kernel pick the interface of the default route, whose address is the LAN address.
_PROBE_ADDRESS = ("192.0.2.1", 9)


@dataclass
class CertFiles:
    cert: Path
    key: Path
    names: list[str]
    sha256: str  # fingerprint of the certificate (DER), to compare on the other device
    days: int


def lan_addresses() -> list[str]:
    """This machine's non-loopback IP addresses (the default route's first)."""
    found: list[str] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_PROBE_ADDRESS)
            found.append(probe.getsockname()[0])
    except OSError:
        pass  # no default route: only the host name's addresses below
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        infos = []
    for info in infos:
        address = str(info[4][0]).split("%")[0]
        if address not in found:
            found.append(address)
    return [a for a in found if _usable(a)]


def _usable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast)


def subject_names(extra: list[str]) -> list[str]:
    """localhost, the host name, loopback and LAN addresses, and the caller's extra names."""
    names = ["localhost", socket.gethostname(), "127.0.0.1", "::1", *lan_addresses(), *extra]
    return list(dict.fromkeys(n.strip() for n in names if n and n.strip()))


def make_certificate(out_dir: Path, *, extra_names: list[str] | None = None, days: int = 90,
                     force: bool = False) -> CertFiles:
    """Write a new EC P-256 key and a self-signed certificate for `subject_names`."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # part of the webrtc extra (aiortc needs it), which make installs
        raise RuntimeError("the cryptography package is needed: pip install cryptography") from exc
    cert_path, key_path = out_dir / CERT_NAME, out_dir / KEY_NAME
    if not force and (cert_path.exists() or key_path.exists()):
        raise FileExistsError(f"{cert_path} or {key_path} exists; pass --force to replace them")
    names = subject_names(extra_names or [])
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Inzwa LAN trial")])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    _write_private(key_path, key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    der = cert.public_bytes(serialization.Encoding.DER)
    return CertFiles(cert_path, key_path, names, hashlib.sha256(der).hexdigest(), days)


def _general_name(name: str) -> Any:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_private(path: Path, data: bytes) -> None:
    """The key is readable by its owner only, from the moment it exists."""
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def instructions(files: CertFiles, port: int) -> str:
    lan = [n for n in files.names if _is_ip(n) and _usable(n)]
    url_host = lan[0] if lan else "<this machine's address>"
    fingerprint = ":".join(files.sha256[i:i + 2] for i in range(0, len(files.sha256), 2)).upper()
    return "\n".join([
        f"wrote {files.cert} and {files.key} (self-signed, valid {files.days} days)",
        f"names: {', '.join(files.names)}",
        f"SHA-256 fingerprint: {fingerprint}",
        "",
        "serve HTTPS/WSS on the LAN (a gateway off loopback needs a credential):",
        f"  export INZWA_TLS_CERTFILE={files.cert.resolve()}",
        f"  export INZWA_TLS_KEYFILE={files.key.resolve()}",
        "  export INZWA_HOST=0.0.0.0 INZWA_API_KEYS=<a long random key>",
        "  make run",
        f"then open https://{url_host}:{port}/ on the other device, accept the certificate warning",
        "(check the fingerprint above), and enter the key in the page's key field.",
    ])


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
