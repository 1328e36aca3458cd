"""The mesh CA and the coordinator's TLS certificate (cryptography).

At first start the coordinator creates an ECDSA P-256 CA (10 years) and keeps it in the state
store, so every coordinator sharing a store shares the CA. At every start it issues itself a
fresh server certificate (1 year) whose names are:

* :data:`COORDINATOR_NAME`, a fixed name peers verify (``server_hostname``), so a peer checks
  the coordinator's identity whatever address it dials, and a certificate this CA might one day
  issue to an ordinary peer can never pass for the coordinator;
* ``this.<domain>`` and ``this.tm`` plus the coordinator's mesh IP when it is also a peer;
* the configured ``tls_names``, ``localhost`` and the loopback address, so browsers and curl
  with the CA installed can use the URL they were given.

Name constraints: the CA certificate carries a critical NameConstraints extension
(:func:`mesh_constraints`) that permits only the mesh's names: ``.<domain>``, ``.tunnelmesh``,
``.tm``, :data:`COORDINATOR_NAME`, the configured ``tls_names``, ``localhost``, and the addresses
of the mesh prefix and loopback. A CA that a peer installs in its system trust store therefore
cannot vouch for ``example.com`` or a LAN address, even if its key is stolen: TLS clients reject
such a leaf. Names the server certificate would carry outside those subtrees (the host name, a
``tls_names`` entry added after the CA was created) are left out of it (:meth:`MeshCa.permits`).
A CA created before constraints existed is kept (replacing it would cut off every joined peer,
which pins it); the coordinator warns about it at every start.

First contact (how a joining peer trusts the CA): the peer fetches ``/api/v1/ca?nonce=N`` with
TLS verification off, and checks ``proof == HMAC-SHA256(auth_token, "tunnelmesh-ca-v1" NUL N NUL
SHA-256(CA DER))`` (:func:`ca_proof`). Only a server that knows the mesh token can compute it,
and the peer sends the token nowhere before the check passes; afterwards it pins the CA and
verifies TLS normally. A stolen token lets an attacker impersonate the coordinator, which the
token allows anyway (it is the mesh's shared secret).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunnelmesh.coordinator.meshlisten import load_cert_pem

__all__ = [
    "COORDINATOR_NAME",
    "MeshCa",
    "ServerCert",
    "ca_fingerprint",
    "ca_proof",
    "client_ssl_context",
    "mesh_constraints",
]

log = logging.getLogger(__name__)

COORDINATOR_NAME = "coordinator.tunnelmesh.invalid"
"""The DNS name every coordinator certificate carries and every peer verifies."""

_PROOF_CONTEXT = b"tunnelmesh-ca-v1"


def ca_proof(token: str, nonce: str, ca_pem: str) -> str:
    """The hex HMAC that proves the sender of ``ca_pem`` knows the mesh token."""
    der = x509.load_pem_x509_certificate(ca_pem.encode("ascii")).public_bytes(
        serialization.Encoding.DER
    )
    msg = b"\x00".join((_PROOF_CONTEXT, nonce.encode("utf-8"), hashlib.sha256(der).digest()))
    return hmac.new(token.encode("utf-8"), msg, hashlib.sha256).hexdigest()


def ca_fingerprint(ca_pem: str) -> str:
    """SHA-256 of the CA certificate's DER, hex with colons (as openssl prints it)."""
    der = x509.load_pem_x509_certificate(ca_pem.encode("ascii")).public_bytes(
        serialization.Encoding.DER
    )
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def client_ssl_context(ca_pem: str) -> ssl.SSLContext:
    """A TLS client context that trusts only the mesh CA (hostname checked against
    :data:`COORDINATOR_NAME` by passing it as ``server_hostname``)."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def mesh_constraints(
    domain: str, mesh_cidr: str, tls_names: Sequence[str] = ()
) -> tuple[list[str], list[IpNetwork]]:
    """The DNS subtrees and networks a mesh CA may vouch for.

    Args:
        domain: the mesh's DNS domain (``tunnelmesh`` unless configured).
        mesh_cidr: the mesh prefix.
        tls_names: extra names the coordinator is reached by (host names or addresses).

    Returns:
        ``(dns_subtrees, networks)``: each DNS subtree permits the name and every name below it.
    """
    dns = [domain, "tunnelmesh", "tm", COORDINATOR_NAME, "localhost"]
    nets: list[IpNetwork] = [ipaddress.ip_network(mesh_cidr, strict=False), *_LOOPBACK]
    for name in tls_names:
        try:
            nets.append(ipaddress.ip_network(name))
        except ValueError:
            dns.append(name.strip(".").lower())
    return list(dict.fromkeys(d.lower() for d in dns if d)), list(dict.fromkeys(nets))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class ServerCert:
    cert_pem: bytes
    key_pem: bytes

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS server context presenting this certificate (TLS 1.2+)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        load_cert_pem(ctx, self.cert_pem, self.key_pem)
        return ctx


class MeshCa:
    """A CA key and certificate."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(
        cls,
        domain: str = "tunnelmesh",
        *,
        mesh_cidr: str = "172.30.0.0/16",
        tls_names: Sequence[str] = (),
    ) -> MeshCa:
        """A new CA, name-constrained to the mesh (see :func:`mesh_constraints`)."""
        dns, nets = mesh_constraints(domain, mesh_cidr, tls_names)
        permitted: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        permitted += [x509.IPAddress(n) for n in nets]
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"TunnelMesh CA (.{domain})"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TunnelMesh"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def name_constraints(self) -> x509.NameConstraints | None:
        """The CA's NameConstraints, or None for a CA made before they existed."""
        try:
            return self.cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            return None

    def permits(self, name: str) -> bool:
        """True when a certificate of this CA may carry ``name`` (a DNS name or an address)."""
        nc = self.name_constraints
        if nc is None:
            return True
        subtrees = nc.permitted_subtrees or []
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            ip = None
        if ip is not None:
            return any(
                isinstance(g, x509.IPAddress)
                and isinstance(g.value, ipaddress.IPv4Network | ipaddress.IPv6Network)
                and ip in g.value
                for g in subtrees
            )
        host = name.strip(".").lower()
        return any(
            isinstance(g, x509.DNSName)
            and (host == g.value.lower() or host.endswith("." + g.value.lower().lstrip(".")))
            for g in subtrees
        )

    def to_bytes(self) -> bytes:
        """Certificate and key, PEM, concatenated (what the state store keeps)."""
        return self.cert_pem.encode("ascii") + self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> MeshCa:
        cert = x509.load_pem_x509_certificate(data)
        key = serialization.load_pem_private_key(
            data[data.index(b"-----BEGIN PRIVATE KEY") :], password=None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):  # pragma: no cover
            raise ValueError("the mesh CA key is not an EC key")
        return cls(cert, key)

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def issue_server_cert(
        self, dns_names: Iterable[str], ip_addresses: Iterable[str], days: int = 365
    ) -> ServerCert:
        """A serverAuth certificate for the coordinator (always names COORDINATOR_NAME).

        Names and addresses outside the CA's name constraints are left out (a client would
        reject the whole certificate for one of them).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(COORDINATOR_NAME)]
        seen = {COORDINATOR_NAME}
        left_out: list[str] = []
        addresses = list(ip_addresses)
        for n in dns_names:
            try:
                ipaddress.ip_address(n)
            except ValueError:
                pass
            else:
                addresses.append(n)  # an address given as a name is certified as an address
                continue
            if n and n not in seen:
                seen.add(n)
                if self.permits(n):
                    names.append(x509.DNSName(n))
                else:
                    left_out.append(n)
        ips_seen: set[str] = set()
        for a in addresses:
            try:
                ip = ipaddress.ip_address(a)
            except ValueError:
                continue
            if str(ip) not in ips_seen:
                ips_seen.add(str(ip))
                if self.permits(str(ip)):
                    names.append(x509.IPAddress(ip))
                else:
                    left_out.append(str(ip))
        if left_out:
            log.debug("outside the mesh CA's name constraints, not certified: %s", left_out)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tunnelmesh coordinator")])
            )
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return ServerCert(
            cert.public_bytes(serialization.Encoding.PEM)
            + self.cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
