"""Cosign-compatible image signing: keys, detached signatures and Sigstore bundles, all offline.

What is compatible with what:

- **Key pairs** are the files ``cosign generate-key-pair`` writes. ``cosign.key`` is a PEM block
  of type ``ENCRYPTED SIGSTORE PRIVATE KEY`` (older cosign: ``ENCRYPTED COSIGN PRIVATE KEY``, which
  is read but never written) whose body is a JSON envelope: scrypt (N=65536, r=8, p=1, 32-byte
  salt) derives a 32-byte key that opens a NaCl secretbox (XSalsa20-Poly1305, 24-byte nonce) holding
  the PKCS#8 DER private key. Byte fields are standard base64 with padding, as Go's ``encoding/json``
  writes ``[]byte``. ``cosign.pub`` is a plain PKIX ``PUBLIC KEY`` PEM.
- **Signatures** are what ``cosign sign-blob --key`` makes: ECDSA P-256 over the SHA-256 of the
  blob, ASN.1 DER. Because the image pipeline already has the SHA-256 (it hashes the stream once),
  signing and verifying take the digest and use a prehashed ECDSA, which is the same signature as
  ``openssl dgst -sha256 -sign`` over the blob. ``signature_b64`` is the content of cosign's
  ``.sig`` file. RSA keys of 2048 bits or more (cosign ``--signing-algorithm rsa-sign-pkcs1-*``,
  PKCS#1 v1.5 with SHA-256) are accepted as well; other curves and Ed25519 are refused because they
  do not sign a SHA-256 digest.
- **Bundles** are Sigstore bundle v0.3 JSON with ``verificationMaterial.publicKey.hint`` and
  ``messageSignature`` and no transparency-log entry (the offline shape ``cosign verify-blob
  --bundle … --key cosign.pub --insecure-ignore-tlog`` accepts). The hint is what cosign and
  sigstore-go write: base64 (standard, padded) of the SHA-256 of the DER SubjectPublicKeyInfo. The
  hint is unauthenticated: verification only uses it to try the matching trusted key first and
  always verifies against keys from the caller's trust store, never a key from the bundle.

Errors carry a stable ``code`` (see ``ERROR_CODES``) and a message that says what to do. No message
contains a passphrase, key material or a decrypted byte, and low-level exceptions are not chained.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import nacl.exceptions
import nacl.secret
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "ERROR_CODES",
    "PEM_TYPE_COSIGN_PRIVATE_KEY",
    "PEM_TYPE_PUBLIC_KEY",
    "PEM_TYPE_SIGSTORE_PRIVATE_KEY",
    "KeyPair",
    "PrivateKey",
    "PublicKey",
    "SignatureInvalid",
    "SigningError",
    "SigningKeyError",
    "encrypt_private_key",
    "generate_key_pair",
    "import_private_key",
    "key_fingerprint",
    "key_hint",
    "load_private_key",
    "load_public_key",
    "make_bundle",
    "public_key_pem",
    "sign_digest",
    "signature_b64",
    "signature_from_b64",
    "verify_bundle",
    "verify_digest",
    "verify_with_any",
]

PEM_TYPE_SIGSTORE_PRIVATE_KEY: Final = "ENCRYPTED SIGSTORE PRIVATE KEY"
PEM_TYPE_COSIGN_PRIVATE_KEY: Final = "ENCRYPTED COSIGN PRIVATE KEY"
PEM_TYPE_PUBLIC_KEY: Final = "PUBLIC KEY"
_ENCRYPTED_PEM_TYPES: Final = (PEM_TYPE_SIGSTORE_PRIVATE_KEY, PEM_TYPE_COSIGN_PRIVATE_KEY)

BUNDLE_MEDIA_TYPE: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"
#: Media types a client must read (protobuf-specs); the content rules below are the same for all.
_ACCEPTED_BUNDLE_MEDIA_TYPES: Final = frozenset(
    {
        BUNDLE_MEDIA_TYPE,
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
    }
)

# What cosign (go-securesystemslib ``encrypted``, "standard" parameters) writes.
_KDF_NAME: Final = "scrypt"
_CIPHER_NAME: Final = "nacl/secretbox"
_SCRYPT_N: Final = 65536
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_SALT_BYTES: Final = 32
_KEY_BYTES: Final = nacl.secret.SecretBox.KEY_SIZE  # 32
_NONCE_BYTES: Final = nacl.secret.SecretBox.NONCE_SIZE  # 24
# Reading: accept other scrypt parameters (older cosign used N=32768) but bound the work a key
# file can demand, so a hostile file cannot make the loader allocate gigabytes.
_SCRYPT_MAX_MEMORY: Final = 256 * 1024 * 1024  # 128 * N * r bytes
_SCRYPT_MAX_P: Final = 16
_SCRYPT_MIN_N: Final = 16384

_RSA_MIN_BITS: Final = 2048
_MAX_SIGNATURE_BYTES: Final = 1024  # RSA-8192 would be 1024 bytes; ECDSA P-256 DER is <= 72
_MAX_PEM_BYTES: Final = 64 * 1024
_MAX_BUNDLE_BYTES: Final = 1024 * 1024
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_PEM_BLOCK = re.compile(
    r"-----BEGIN (?P<type>[A-Z0-9 ]+)-----\r?\n(?P<body>.*?)-----END (?P=type)-----",
    re.DOTALL,
)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

#: Every ``code`` an error of this module can carry, with the exception class that carries it.
ERROR_CODES: Final[Mapping[str, str]] = {
    "digest_invalid": "SigningError",
    "key_pem_invalid": "SigningKeyError",
    "key_format_invalid": "SigningKeyError",
    "key_kdf_unsupported": "SigningKeyError",
    "key_passphrase_invalid": "SigningKeyError",
    "key_algorithm_unsupported": "SigningKeyError",
    "trust_store_empty": "SigningKeyError",
    "signature_malformed": "SignatureInvalid",
    "signature_mismatch": "SignatureInvalid",
    "signature_untrusted": "SignatureInvalid",
    "bundle_malformed": "SignatureInvalid",
    "bundle_media_type_unsupported": "SignatureInvalid",
    "bundle_content_unsupported": "SignatureInvalid",
    "bundle_digest_mismatch": "SignatureInvalid",
}


# --------------------------------------------------------------------------------------- errors


class SigningError(Exception):
    """Base error. ``code`` is stable (``ERROR_CODES``); ``message`` says what went wrong and what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SigningKeyError(SigningError):
    """A key (or the trust store) cannot be used: unreadable, wrong passphrase, unsupported algorithm.

    Not a subclass of the built-in ``KeyError``: that one is for missing mapping keys, quotes its
    message in ``str()`` and would be swallowed by ``except KeyError`` around dictionary lookups.
    """


class SignatureInvalid(SigningError):
    """The signature, or the bundle carrying it, does not prove the digest was signed by a trusted key."""


# ------------------------------------------------------------------------------------- helpers


def _digest_bytes(sha256_hex: str) -> bytes:
    if not isinstance(sha256_hex, str) or _HEX_SHA256.fullmatch(sha256_hex) is None:
        raise SigningError(
            "digest_invalid",
            "the image digest must be a SHA-256 given as 64 hexadecimal characters",
        )
    return bytes.fromhex(sha256_hex)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode_strict(value: object) -> bytes | None:
    """Standard base64 with padding, nothing else (what Go writes for ``[]byte``); None if invalid."""
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def _b64decode_proto(value: object) -> bytes | None:
    """Protobuf-JSON ``bytes``: standard or URL-safe base64, padding optional; None if invalid."""
    if not isinstance(value, str) or not value.isascii():
        return None
    text = value.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _pem_encode(pem_type: str, der: bytes) -> bytes:
    """PEM exactly as Go's ``encoding/pem`` writes it: 64-character lines, trailing newline."""
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return ("\n".join([f"-----BEGIN {pem_type}-----", *lines, f"-----END {pem_type}-----"]) + "\n").encode(
        "ascii"
    )


def _pem_decode(pem: bytes | str, allowed_types: tuple[str, ...], what: str) -> tuple[str, bytes]:
    """The first PEM block's type and decoded body; the type must be one of ``allowed_types``."""
    if isinstance(pem, bytes):
        if len(pem) > _MAX_PEM_BYTES:
            raise SigningKeyError("key_pem_invalid", f"the {what} is larger than {_MAX_PEM_BYTES} bytes")
        try:
            text = pem.decode("ascii")
        except UnicodeDecodeError:
            raise SigningKeyError(
                "key_pem_invalid", f"the {what} is not ASCII PEM text; pass the file's contents as is"
            ) from None
    elif isinstance(pem, str):
        if len(pem) > _MAX_PEM_BYTES:
            raise SigningKeyError("key_pem_invalid", f"the {what} is larger than {_MAX_PEM_BYTES} bytes")
        text = pem
    else:
        raise SigningKeyError("key_pem_invalid", f"the {what} must be PEM text (bytes or str)")
    match = _PEM_BLOCK.search(text)
    expected = " or ".join(repr(t) for t in allowed_types)
    if match is None:
        raise SigningKeyError(
            "key_pem_invalid", f"no PEM block found in the {what}; expected a block of type {expected}"
        )
    pem_type = match.group("type")
    if pem_type not in allowed_types:
        raise SigningKeyError(
            "key_pem_invalid",
            f"the {what} is a PEM block of type {pem_type!r}; expected {expected}",
        )
    body = "".join(match.group("body").split())
    der = _b64decode_strict(body)
    if der is None or not der:
        raise SigningKeyError("key_pem_invalid", f"the {what}'s PEM body is not valid base64")
    return pem_type, der


def _check_public_key(key: object, what: str) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise SigningKeyError(
                "key_algorithm_unsupported",
                f"the {what} is ECDSA on curve {key.curve.name}; only P-256 (prime256v1/secp256r1) "
                "signs SHA-256 image digests - generate the key with cosign's default algorithm",
            )
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _RSA_MIN_BITS:
            raise SigningKeyError(
                "key_algorithm_unsupported",
                f"the {what} is RSA-{key.key_size}; RSA keys must have at least {_RSA_MIN_BITS} bits",
            )
        return key
    raise SigningKeyError(
        "key_algorithm_unsupported",
        f"the {what} is {type(key).__name__.lstrip('_')}; use an ECDSA P-256 key "
        f"(or RSA >= {_RSA_MIN_BITS} bits)",
    )


def _check_private_key(key: object, what: str) -> PrivateKey:
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        _check_public_key(key.public_key(), what)
        return key
    raise SigningKeyError(
        "key_algorithm_unsupported",
        f"the {what} is {type(key).__name__.lstrip('_')}; use an ECDSA P-256 key "
        f"(or RSA >= {_RSA_MIN_BITS} bits)",
    )


def _scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=_KEY_BYTES, n=n, r=r, p=p).derive(passphrase)


def _check_passphrase(passphrase: object) -> bytes:
    if not isinstance(passphrase, bytes | bytearray):
        raise SigningKeyError(
            "key_passphrase_invalid", "the passphrase must be bytes (encode text passphrases as UTF-8)"
        )
    return bytes(passphrase)


# ------------------------------------------------------------------------------------------ keys


@dataclass(frozen=True)
class KeyPair:
    """``private_pem`` is ``cosign.key`` (encrypted), ``public_pem`` is ``cosign.pub``."""

    private_pem: bytes = field(repr=False)
    public_pem: bytes


def public_key_pem(key: PublicKey | PrivateKey) -> bytes:
    """The PKIX ``PUBLIC KEY`` PEM (``cosign.pub``) of a key; a private key gives its public half."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def encrypt_private_key(private_key: PrivateKey, passphrase: bytes) -> bytes:
    """Wrap a private key as cosign does: ``ENCRYPTED SIGSTORE PRIVATE KEY`` PEM (scrypt + secretbox).

    The same as ``cosign import-key-pair`` writes, so it also converts a key made elsewhere
    (see ``import_private_key``). An empty passphrase is allowed, as in cosign, but then anyone who
    reads the file has the key.
    """
    secret = _check_passphrase(passphrase)
    key = _check_private_key(private_key, "private key")
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    salt = os.urandom(_SALT_BYTES)
    nonce = os.urandom(_NONCE_BYTES)
    box = nacl.secret.SecretBox(_scrypt(secret, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P))
    ciphertext = box.encrypt(der, nonce).ciphertext  # tag || ciphertext, as Go's secretbox.Seal
    envelope = {  # field order and compact separators as Go's json.Marshal of the envelope struct
        "kdf": {
            "name": _KDF_NAME,
            "params": {"N": _SCRYPT_N, "r": _SCRYPT_R, "p": _SCRYPT_P},
            "salt": _b64encode(salt),
        },
        "cipher": {"name": _CIPHER_NAME, "nonce": _b64encode(nonce)},
        "ciphertext": _b64encode(ciphertext),
    }
    return _pem_encode(PEM_TYPE_SIGSTORE_PRIVATE_KEY, json.dumps(envelope, separators=(",", ":")).encode())


def generate_key_pair(passphrase: bytes) -> KeyPair:
    """A new ECDSA P-256 key pair in cosign's file formats (``cosign generate-key-pair``)."""
    secret = _check_passphrase(passphrase)
    key = ec.generate_private_key(ec.SECP256R1())
    return KeyPair(private_pem=encrypt_private_key(key, secret), public_pem=public_key_pem(key))


def _int_param(params: Mapping[str, Any], name: str) -> int:
    value = params.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SigningKeyError(
            "key_format_invalid", f"the private key's scrypt parameter {name!r} is missing or not an integer"
        )
    return value


def load_private_key(pem: bytes | str, passphrase: bytes) -> PrivateKey:
    """Decrypt a cosign private key (``ENCRYPTED SIGSTORE PRIVATE KEY`` or ``ENCRYPTED COSIGN PRIVATE KEY``).

    Raises ``SigningKeyError``: ``key_passphrase_invalid`` when the passphrase does not open the key
    (or the file was altered), ``key_pem_invalid``/``key_format_invalid``/``key_kdf_unsupported`` for
    a file that is not a cosign key, ``key_algorithm_unsupported`` for a key that is not P-256/RSA.
    """
    secret = _check_passphrase(passphrase)
    _, body = _pem_decode(pem, _ENCRYPTED_PEM_TYPES, "private key")
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SigningKeyError(
            "key_format_invalid",
            "the private key's PEM body is not cosign's JSON envelope; for an OpenSSL/PKCS#8 key use "
            "import_private_key (or `cosign import-key-pair`)",
        ) from None
    kdf = envelope.get("kdf") if isinstance(envelope, dict) else None
    cipher = envelope.get("cipher") if isinstance(envelope, dict) else None
    if not isinstance(kdf, dict) or not isinstance(cipher, dict):
        raise SigningKeyError("key_format_invalid", "the private key's envelope lacks 'kdf' or 'cipher'")
    if kdf.get("name") != _KDF_NAME:
        raise SigningKeyError(
            "key_kdf_unsupported", f"the private key uses KDF {kdf.get('name')!r}; only 'scrypt' is supported"
        )
    if cipher.get("name") != _CIPHER_NAME:
        raise SigningKeyError(
            "key_kdf_unsupported",
            f"the private key uses cipher {cipher.get('name')!r}; only 'nacl/secretbox' is supported",
        )
    params = kdf.get("params")
    if not isinstance(params, dict):
        raise SigningKeyError("key_format_invalid", "the private key's scrypt parameters are missing")
    n, r, p = _int_param(params, "N"), _int_param(params, "r"), _int_param(params, "p")
    if (
        n < _SCRYPT_MIN_N
        or n & (n - 1)
        or r < 1
        or not 1 <= p <= _SCRYPT_MAX_P
        or 128 * n * r > _SCRYPT_MAX_MEMORY
    ):
        raise SigningKeyError(
            "key_kdf_unsupported",
            f"the private key's scrypt parameters (N={n}, r={r}, p={p}) are outside the accepted range "
            f"(N a power of two >= {_SCRYPT_MIN_N}, 128*N*r <= {_SCRYPT_MAX_MEMORY} bytes, "
            f"1 <= p <= {_SCRYPT_MAX_P}); re-encrypt it with `cosign import-key-pair`",
        )
    salt = _b64decode_strict(kdf.get("salt"))
    nonce = _b64decode_strict(cipher.get("nonce"))
    ciphertext = _b64decode_strict(envelope.get("ciphertext"))
    if not salt or nonce is None or len(nonce) != _NONCE_BYTES or not ciphertext:
        raise SigningKeyError(
            "key_format_invalid",
            f"the private key's salt, nonce ({_NONCE_BYTES} bytes) or ciphertext is missing or not base64",
        )
    try:
        der = nacl.secret.SecretBox(_scrypt(secret, salt, n, r, p)).decrypt(ciphertext, nonce)
    except nacl.exceptions.CryptoError:
        raise SigningKeyError(
            "key_passphrase_invalid",
            "the passphrase does not decrypt this private key (or the key file was altered); "
            "check the passphrase (cosign reads it from COSIGN_PASSWORD)",
        ) from None
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SigningKeyError(
            "key_format_invalid", "the decrypted private key is not a PKCS#8 DER key"
        ) from None
    return _check_private_key(key, "private key")


def import_private_key(pem: bytes | str, password: bytes | None = None) -> PrivateKey:
    """Read an OpenSSL/PKCS#8 private key (``PRIVATE KEY``, ``EC PRIVATE KEY``, ``RSA PRIVATE KEY``,
    ``ENCRYPTED PRIVATE KEY``), as ``cosign import-key-pair`` does; pass the result to
    ``encrypt_private_key`` to store it in cosign's format."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    if not isinstance(data, bytes) or len(data) > _MAX_PEM_BYTES:
        raise SigningKeyError("key_pem_invalid", "the private key must be PEM text of at most 64 KiB")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        raise SigningKeyError(
            "key_passphrase_invalid",
            "the private key is encrypted and needs a password"
            if password is None
            else "a password was given but the private key is not encrypted",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise SigningKeyError(
            "key_pem_invalid",
            "the private key is not a readable PEM key, or the password is wrong; "
            "expected PRIVATE KEY, EC PRIVATE KEY, RSA PRIVATE KEY or ENCRYPTED PRIVATE KEY",
        ) from None
    return _check_private_key(key, "private key")


def load_public_key(pem: bytes | str) -> PublicKey:
    """Read a PKIX ``PUBLIC KEY`` PEM (``cosign.pub``); only ECDSA P-256 and RSA >= 2048 are accepted."""
    _, der = _pem_decode(pem, (PEM_TYPE_PUBLIC_KEY,), "public key")
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        raise SigningKeyError(
            "key_pem_invalid", "the public key's PEM body is not a DER SubjectPublicKeyInfo"
        ) from None
    return _check_public_key(key, "public key")


def _spki_der(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_fingerprint(public_key: PublicKey) -> str:
    """Lower-case hex SHA-256 of the DER SubjectPublicKeyInfo.

    Equal to ``openssl pkey -pubin -in cosign.pub -outform DER | sha256sum``.
    """
    return hashlib.sha256(_spki_der(_check_public_key(public_key, "public key"))).hexdigest()


def key_hint(public_key: PublicKey) -> str:
    """The bundle's ``publicKey.hint`` as cosign/sigstore-go write it: base64(SHA-256(DER SPKI)).

    The same 32 bytes as ``key_fingerprint``, base64-encoded instead of hex.
    """
    return _b64encode(hashlib.sha256(_spki_der(_check_public_key(public_key, "public key"))).digest())


# ------------------------------------------------------------------------------------ signatures


def sign_digest(private_key: PrivateKey, sha256_hex: str) -> bytes:
    """The DER signature ``cosign sign-blob --key`` makes over a blob whose SHA-256 is ``sha256_hex``."""
    digest = _digest_bytes(sha256_hex)
    key = _check_private_key(private_key, "private key")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    return key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def signature_b64(signature: bytes) -> str:
    """The content of cosign's ``.sig`` file: base64 of the DER signature."""
    return _b64encode(signature)


def signature_from_b64(text: str | bytes) -> bytes:
    """Decode a cosign ``.sig`` file's content (base64, surrounding whitespace ignored)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    decoded = _b64decode_strict(text.strip()) if isinstance(text, str) else None
    if not decoded:
        raise SignatureInvalid("signature_malformed", "the signature is not base64 as in a cosign .sig file")
    return decoded


def verify_digest(public_key: PublicKey, sha256_hex: str, signature: bytes | str) -> bool:
    """Check a cosign signature (DER bytes, or the base64 text of a ``.sig`` file) over a digest.

    Returns True; never returns False: a signature that does not verify raises ``SignatureInvalid``
    (``signature_malformed`` if it is not a DER ECDSA/RSA signature, ``signature_mismatch`` otherwise).
    """
    digest = _digest_bytes(sha256_hex)
    key = _check_public_key(public_key, "public key")
    sig = signature_from_b64(signature) if isinstance(signature, str) else signature
    if not isinstance(sig, bytes) or not sig or len(sig) > _MAX_SIGNATURE_BYTES:
        raise SignatureInvalid("signature_malformed", "the signature is empty, too long or not bytes")
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            # decode_dss_signature is strict DER: no BER lengths, no padded integers, no trailing bytes.
            try:
                decode_dss_signature(sig)
            except ValueError:
                raise SignatureInvalid(
                    "signature_malformed", "the signature is not a DER-encoded ECDSA signature"
                ) from None
            key.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        else:
            key.verify(sig, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureInvalid(
            "signature_mismatch",
            "the signature does not match this image digest and key; the image or signature was "
            "altered, or it was signed by another key",
        ) from None
    return True


def _load_trusted(trusted_public_pems: Iterable[bytes | str | PublicKey]) -> list[PublicKey]:
    keys: list[PublicKey] = []
    for item in trusted_public_pems:
        if isinstance(item, bytes | str):
            keys.append(load_public_key(item))
        else:
            keys.append(_check_public_key(item, "trusted public key"))
    if not keys:
        raise SigningKeyError(
            "trust_store_empty", "no trusted public keys are configured; add the signer's cosign.pub"
        )
    return keys


def _verify_candidates(keys: list[PublicKey], sha256_hex: str, signature: bytes) -> str:
    malformed_for_all = True
    for key in keys:
        try:
            verify_digest(key, sha256_hex, signature)
        except SignatureInvalid as exc:
            # An RSA signature is "malformed" for an ECDSA key, so keep trying the other keys.
            malformed_for_all = malformed_for_all and exc.code == "signature_malformed"
            continue
        return key_fingerprint(key)
    if malformed_for_all:
        raise SignatureInvalid(
            "signature_malformed",
            "the signature is not a DER ECDSA (or RSA) signature for any trusted key's algorithm",
        )
    raise SignatureInvalid(
        "signature_untrusted",
        f"the signature does not verify with any of the {len(keys)} trusted key(s); the image or "
        "signature was altered, or the signer's public key is not in the trust store",
    )


def verify_with_any(
    trusted_public_pems: Iterable[bytes | str | PublicKey], sha256_hex: str, signature: bytes | str
) -> str:
    """Verify against a trust store; returns the ``key_fingerprint`` of the key that matched.

    Every trusted key must load (a broken trust store is a ``SigningKeyError``, not a silent skip).
    No match raises ``SignatureInvalid`` with code ``signature_untrusted``.
    """
    keys = _load_trusted(trusted_public_pems)
    _digest_bytes(sha256_hex)
    sig = signature_from_b64(signature) if isinstance(signature, str) else signature
    return _verify_candidates(keys, sha256_hex, sig)


# --------------------------------------------------------------------------------------- bundles


def make_bundle(sha256_hex: str, signature: bytes, public_key: PublicKey) -> dict[str, Any]:
    """A Sigstore bundle v0.3 (offline: public-key hint, no tlog entry) for a cosign signature.

    The signature is verified first, so a bundle is never written for the wrong key or digest.
    Serialise with ``json.dumps``; cosign names the file ``<blob>.sigstore.json``.
    """
    verify_digest(public_key, sha256_hex, signature)
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key_hint(public_key)},
            "tlogEntries": [],
        },
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": _b64encode(_digest_bytes(sha256_hex))},
            "signature": _b64encode(signature),
        },
    }


def _malformed(detail: str) -> SignatureInvalid:
    return SignatureInvalid("bundle_malformed", f"the bundle is not a valid Sigstore bundle: {detail}")


def verify_bundle(
    bundle: Mapping[str, Any] | str | bytes,
    trusted_public_pems: Iterable[bytes | str | PublicKey],
    sha256_hex: str,
) -> str:
    """Verify a key-signed Sigstore bundle for an image digest; returns the matching key's fingerprint.

    Checks the media type (v0.1-v0.3), that the content is a ``messageSignature`` whose SHA2_256
    ``messageDigest`` equals ``sha256_hex``, and that the signature verifies with a trusted key. The
    key in the bundle is only a hint and never trusted; certificate (keyless) and DSSE bundles are
    refused. Transparency-log entries and timestamps, if present, are not checked (offline, like
    ``cosign verify-blob --insecure-ignore-tlog``).
    """
    expected = _digest_bytes(sha256_hex)
    keys = _load_trusted(trusted_public_pems)
    if isinstance(bundle, str | bytes):
        if len(bundle) > _MAX_BUNDLE_BYTES:
            raise _malformed(f"larger than {_MAX_BUNDLE_BYTES} bytes")
        try:
            bundle = json.loads(bundle)
        except (ValueError, UnicodeDecodeError):
            raise _malformed("not JSON") from None
    if not isinstance(bundle, Mapping):
        raise _malformed("the top level is not a JSON object")

    media_type = bundle.get("mediaType")
    if media_type not in _ACCEPTED_BUNDLE_MEDIA_TYPES:
        raise SignatureInvalid(
            "bundle_media_type_unsupported",
            f"bundle media type {media_type!r} is not supported; expected {BUNDLE_MEDIA_TYPE!r}",
        )
    material = bundle.get("verificationMaterial")
    if not isinstance(material, Mapping):
        raise _malformed("'verificationMaterial' is missing")
    if material.get("certificate") or material.get("x509CertificateChain"):
        raise SignatureInvalid(
            "bundle_content_unsupported",
            "certificate-based (keyless) bundles are not supported; sign with a cosign key pair",
        )
    public_key = material.get("publicKey")
    if not isinstance(public_key, Mapping):
        raise _malformed("'verificationMaterial.publicKey' is missing")
    hint = public_key.get("hint")
    if hint is not None and not isinstance(hint, str):
        raise _malformed("'publicKey.hint' is not a string")

    if "dsseEnvelope" in bundle:
        raise SignatureInvalid(
            "bundle_content_unsupported",
            "DSSE (attestation) bundles are not image signatures; expected 'messageSignature'",
        )
    message = bundle.get("messageSignature")
    if not isinstance(message, Mapping):
        raise _malformed("'messageSignature' is missing")
    digest_obj = message.get("messageDigest")
    if not isinstance(digest_obj, Mapping):
        raise _malformed("'messageSignature.messageDigest' is missing")
    if digest_obj.get("algorithm") != "SHA2_256":
        raise SignatureInvalid(
            "bundle_content_unsupported",
            f"bundle digest algorithm {digest_obj.get('algorithm')!r} is not supported; expected 'SHA2_256'",
        )
    digest = _b64decode_proto(digest_obj.get("digest"))
    if digest is None or len(digest) != len(expected):
        raise _malformed("'messageDigest.digest' is not a base64 SHA-256")
    if not hmac.compare_digest(digest, expected):
        raise SignatureInvalid(
            "bundle_digest_mismatch",
            "the bundle was made for another image (its SHA-256 differs from this image's)",
        )
    signature = _b64decode_proto(message.get("signature"))
    if not signature:
        raise _malformed("'messageSignature.signature' is missing or not base64")

    # The hint is unauthenticated: it only decides which trusted key is tried first.
    keys.sort(key=lambda k: key_hint(k) != hint)
    return _verify_candidates(keys, sha256_hex, signature)
