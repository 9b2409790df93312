"""SSH key pairs: public keys a project keeps by name, to put into servers (``openstack keypair``).

Only the public half is ever stored. A key pair is *copied* into a server when the server is
created, so deleting or replacing it later never changes a running server.

What is accepted: one line in OpenSSH's ``authorized_keys`` form (``<type> <base64> [comment]``) of
an Ed25519, ECDSA (NIST P-256, P-384, P-521) or RSA (2048 bits or more) key. DSA, short RSA keys,
certificates, security-key (``sk-``) keys, other formats and anything that is not a key are refused
with a message that says what to do instead. A private key pasted by mistake is refused without
repeating any of it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from pydantic import BaseModel, ConfigDict, Field

from sovra.domain.errors import InvalidArgument
from sovra.domain.names import plain_text

KEYPAIR_KIND = "KeyPair"
MAX_PUBLIC_KEY_BYTES = 16 * 1024
MIN_RSA_BITS = 2048
FIELD = "public_key"
_GENERATE_HINT = "make one with `ssh-keygen -t ed25519`, or leave public_key out and Sovra generates one"


class KeyType(StrEnum):
    """The OpenSSH key types accepted, as they start an ``authorized_keys`` line."""

    ED25519 = "ssh-ed25519"
    ECDSA_P256 = "ecdsa-sha2-nistp256"
    ECDSA_P384 = "ecdsa-sha2-nistp384"
    ECDSA_P521 = "ecdsa-sha2-nistp521"
    RSA = "ssh-rsa"


_TYPES = frozenset(t.value for t in KeyType)
_TYPE_LIKE = re.compile(r"^[a-z][a-z0-9@.-]{0,39}$")


class KeyPairSpec(BaseModel):
    """What is stored: the public key line as servers receive it, and facts computed from it."""

    model_config = ConfigDict(extra="forbid")

    public_key: str = Field(description="One OpenSSH authorized_keys line: type, base64 key, comment.")
    fingerprint: str = Field(description="SHA256:<base64>, as `ssh-keygen -l` prints it (output only).")
    type: KeyType = Field(description="The key type (output only).")


@dataclass(frozen=True)
class GeneratedPair:
    spec: KeyPairSpec
    private_key: str  # OpenSSH PEM, unencrypted: handed to the caller once, never stored


def _refuse_other_formats(text: str) -> None:
    """Things people paste instead of a public key line, each with what to send instead."""
    if "PRIVATE KEY" in text or "PuTTY-User-Key-File" in text:
        raise InvalidArgument(
            "public_key holds a PRIVATE key; it was refused, not stored, and is not repeated here. "
            "Send the public half instead: the .pub file beside it, or what `ssh-keygen -y -f KEYFILE` "
            "prints",
            field=FIELD,
        )
    if "BEGIN SSH2 PUBLIC KEY" in text:
        raise InvalidArgument(
            "public_key is in the SSH2 (RFC 4716) format; convert it to one OpenSSH line with "
            "`ssh-keygen -i -f FILE`",
            field=FIELD,
        )
    if "BEGIN PUBLIC KEY" in text or "BEGIN RSA PUBLIC KEY" in text:
        raise InvalidArgument(
            "public_key is a PEM public key; convert it to one OpenSSH line with "
            "`ssh-keygen -i -m PKCS8 -f FILE`",
            field=FIELD,
        )
    if len(text.splitlines()) > 1:
        raise InvalidArgument(
            "public_key must be one line: <type> <base64 key> [comment], as in an .pub file", field=FIELD
        )


def _refuse_type(given: str) -> None:
    """Explain why a key type that is not in ``KeyType`` is refused."""
    if given == "ssh-dss":
        reason = "DSA keys are refused: they are weak, and OpenSSH no longer accepts them"
    elif given.endswith("-cert-v01@openssh.com"):
        reason = "certificates are refused: send the plain public key the certificate was issued for"
    elif given.startswith("sk-"):
        reason = "security-key (FIDO) keys are refused: servers may not have the middleware they need"
    elif _TYPE_LIKE.fullmatch(given):
        reason = f"{given!r} is not an OpenSSH public key type"
    else:  # not repeated: it might be part of a secret pasted by mistake
        reason = "public_key does not start with an OpenSSH key type"
    accepted = ", ".join(KeyType)
    raise InvalidArgument(f"{reason}; accepted types: {accepted}; {_GENERATE_HINT}", field=FIELD)


def _comment(text: str) -> str:
    try:
        return plain_text(text)
    except ValueError as exc:
        raise InvalidArgument(f"the comment of public_key {exc}", field=FIELD) from None


def fingerprint_of(key_blob: bytes) -> str:
    """OpenSSH's SHA-256 fingerprint of a key's wire-format blob (``SHA256:`` + unpadded base64)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")


def _spec(key: serialization.SSHPublicKeyTypes, key_type: KeyType, comment: str) -> KeyPairSpec:
    canonical = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    blob = base64.b64decode(canonical.split()[1])
    line = f"{canonical} {comment}" if comment else canonical
    return KeyPairSpec(public_key=line, fingerprint=fingerprint_of(blob), type=key_type)


def parse_public_key(text: str) -> KeyPairSpec:
    """Check an OpenSSH public key line and compute its facts; ``InvalidArgument`` names the problem.

    The stored line is OpenSSH's own encoding of the key followed by the comment as given.
    """
    if len(text.encode()) > MAX_PUBLIC_KEY_BYTES:
        raise InvalidArgument(f"public_key is longer than {MAX_PUBLIC_KEY_BYTES // 1024} KiB", field=FIELD)
    line = text.strip()
    _refuse_other_formats(line)
    fields = line.split(None, 2)
    if not fields:
        raise InvalidArgument(f"public_key is empty; {_GENERATE_HINT}", field=FIELD)
    if fields[0] not in _TYPES:
        _refuse_type(fields[0])
    key_type = KeyType(fields[0])
    if len(fields) < 2:
        raise InvalidArgument(f"public_key has the type {key_type} but no key after it", field=FIELD)
    try:
        key = serialization.load_ssh_public_key(f"{fields[0]} {fields[1]}".encode())
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidArgument(
            f"public_key is not a valid {key_type} key: its base64 part does not decode to one "
            "(copied only in part?)",
            field=FIELD,
        ) from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise InvalidArgument(
            f"this RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are required. {_GENERATE_HINT}",
            field=FIELD,
        )
    return _spec(key, key_type, _comment(fields[2] if len(fields) == 3 else ""))


def generate(comment: str) -> GeneratedPair:
    """A new Ed25519 key pair; the private key exists only in the returned value."""
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    return GeneratedPair(
        spec=_spec(private.public_key(), KeyType.ED25519, _comment(comment)), private_key=pem
    )
