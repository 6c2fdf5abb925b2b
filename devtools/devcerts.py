"""Certificates for the internal hop gateway -> inference (mutual TLS).

``make up`` makes a set in ``.run/tls`` on first start; for Kubernetes the same
command writes the files the production overlay's secretGenerator reads
(docs/deploy.md, "Internal authentication")::

    python -m devtools.devcerts deploy/k8s/overlays/production/tls

One private CA signs two leaves: the inference server's (server auth, for
``localhost``, ``127.0.0.1`` and :data:`INFERENCE_NAME`; client auth for its
own health probe) and the gateway's client certificate (client auth). The inference service accepts only clients
whose certificate chains to the CA (``--tls-client-ca``), so a pod that can
reach port 50051 but holds no gateway certificate gets no answer at all.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: The name the inference certificate is issued for and the gateway verifies
#: (``--inference-tls-server-name``): pods are reached by IP through the headless service.
INFERENCE_NAME = "reprise-inference"

FILES = ("ca.crt", "inference.crt", "inference.key", "gateway.crt", "gateway.key")


@dataclass(frozen=True)
class InternalCerts:
    """Paths of the PEM files in one directory."""

    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)

    @property
    def ca(self) -> str:
        return self.path("ca.crt")

    @property
    def inference_cert(self) -> str:
        return self.path("inference.crt")

    @property
    def inference_key(self) -> str:
        return self.path("inference.key")

    @property
    def gateway_cert(self) -> str:
        return self.path("gateway.crt")

    @property
    def gateway_key(self) -> str:
        return self.path("gateway.key")

    def complete(self) -> bool:
        return all((self.directory / name).is_file() for name in FILES)


_PEM_END = b"-----END CERTIFICATE-----\n"


def _first_certificate(bundle: bytes) -> bytes:
    return bundle[: bundle.index(_PEM_END) + len(_PEM_END)] if _PEM_END in bundle else bundle


def make_internal_certs(directory: Path, days: int = 365, *, rotate: bool = False) -> InternalCerts:
    """Write a fresh CA and the two leaves into ``directory`` (keys readable by the owner only).

    ``rotate`` keeps the CA the directory had so far after the new one in
    ``ca.crt``: while pods roll, old and new certificates are both trusted on
    both sides (see :func:`finish_rotation`). The CA's key is never written:
    each rotation makes a new CA, so no long-lived signing key lies around.
    """
    previous = (directory / "ca.crt").read_bytes() if rotate and (directory / "ca.crt").is_file() else b""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = now + datetime.timedelta(days=days)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(file: str, data: bytes, secret: bool = False) -> None:
        path = directory / file
        path.write_bytes(data)
        if secret:
            os.chmod(path, 0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("reprise-internal-ca"))
        .issuer_name(name("reprise-internal-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(file: str, cn: str, usages: list[x509.ObjectIdentifier], san: list[x509.GeneralName]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        write(f"{file}.crt", builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        write(f"{file}.key", pem, secret=True)

    # Client auth too: the inference pod's exec probe (deploy/healthcheck.py) shows its own certificate.
    leaf("inference", INFERENCE_NAME, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], [
        x509.DNSName(INFERENCE_NAME), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ])
    leaf("gateway", "reprise-gateway", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    write("ca.crt", ca.public_bytes(serialization.Encoding.PEM) + _first_certificate(previous))
    return InternalCerts(directory)


def finish_rotation(directory: Path) -> None:
    """Trust only the newest CA again, once every pod runs with the new certificates."""
    path = directory / "ca.crt"
    path.write_bytes(_first_certificate(path.read_bytes()))


def ensure_internal_certs(directory: Path) -> InternalCerts:
    """The certificates in ``directory``, made first when any file is missing."""
    certs = InternalCerts(directory)
    return certs if certs.complete() else make_internal_certs(directory)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m devtools.devcerts", description=__doc__.split("\n\n")[0])
    p.add_argument("directory", type=Path, help="where to write ca.crt, inference.crt/.key, gateway.crt/.key")
    p.add_argument("--days", type=int, default=365, help="validity of the CA and both leaves")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--rotate", action="store_true", help="new CA and leaves; ca.crt keeps trusting the previous CA")
    step.add_argument("--finish-rotation", action="store_true", help="ca.crt trusts only the newest CA")
    args = p.parse_args(argv)
    if args.finish_rotation:
        finish_rotation(args.directory)
        print(f"{args.directory / 'ca.crt'} now trusts only the newest CA")
        return
    certs = make_internal_certs(args.directory, args.days, rotate=args.rotate)
    print(f"wrote {', '.join(FILES)} to {certs.directory}" + (" (ca.crt also trusts the previous CA)" if args.rotate else ""))


if __name__ == "__main__":
    main()
