"""Cosign-compatible image signing: key files, signatures, Sigstore bundles, interop checks.

Independent checks do not go through ``sovra.images.signing``: the encrypted key is opened with
``hashlib.scrypt`` + PyNaCl, signatures are checked with ``cryptography`` over the blob itself and
with the ``openssl`` CLI, and the bundle is parsed with the ``sigstore`` project's own models.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import re
import shutil
import subprocess
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.secret
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from sovra.images import signing
from sovra.images.signing import (
    BUNDLE_MEDIA_TYPE,
    ERROR_CODES,
    KeyPair,
    SignatureInvalid,
    SigningError,
    SigningKeyError,
    encrypt_private_key,
    generate_key_pair,
    import_private_key,
    key_fingerprint,
    key_hint,
    load_private_key,
    load_public_key,
    make_bundle,
    public_key_pem,
    sign_digest,
    signature_b64,
    signature_from_b64,
    verify_bundle,
    verify_digest,
    verify_with_any,
)

PASSPHRASE = b"correct horse battery staple"
BLOB = b"\x00qcow2-ish image bytes\xff" * 4096
BLOB_SHA256 = hashlib.sha256(BLOB).hexdigest()
OTHER_SHA256 = hashlib.sha256(BLOB + b"!").hexdigest()
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


@pytest.fixture(scope="module")
def pair() -> KeyPair:
    return generate_key_pair(PASSPHRASE)


@pytest.fixture(scope="module")
def private_key(pair: KeyPair) -> signing.PrivateKey:
    return load_private_key(pair.private_pem, PASSPHRASE)


@pytest.fixture(scope="module")
def public_key(pair: KeyPair) -> signing.PublicKey:
    return load_public_key(pair.public_pem)


@pytest.fixture(scope="module")
def signature(private_key: signing.PrivateKey) -> bytes:
    return sign_digest(private_key, BLOB_SHA256)


def _pem_body(pem: bytes, pem_type: str) -> bytes:
    text = pem.decode("ascii")
    assert text.startswith(f"-----BEGIN {pem_type}-----\n")
    assert text.endswith(f"-----END {pem_type}-----\n")
    lines = text.splitlines()[1:-1]
    assert all(len(line) == 64 for line in lines[:-1]) and 0 < len(lines[-1]) <= 64  # Go's encoding/pem
    return base64.b64decode("".join(lines), validate=True)


def _envelope(pem: bytes) -> dict[str, Any]:
    body = _pem_body(pem, "ENCRYPTED SIGSTORE PRIVATE KEY")
    envelope: dict[str, Any] = json.loads(body)
    assert body == json.dumps(envelope, separators=(",", ":")).encode()  # compact, like Go's json.Marshal
    return envelope


def _open_envelope(envelope: dict[str, Any], passphrase: bytes) -> bytes:
    """Decrypt a cosign key envelope without the module under test: hashlib.scrypt + NaCl secretbox."""
    params = envelope["kdf"]["params"]
    key = hashlib.scrypt(
        passphrase,
        salt=base64.b64decode(envelope["kdf"]["salt"], validate=True),
        n=params["N"],
        r=params["r"],
        p=params["p"],
        maxmem=256 * 1024 * 1024,
        dklen=32,
    )
    return nacl.secret.SecretBox(key).decrypt(
        base64.b64decode(envelope["ciphertext"], validate=True),
        base64.b64decode(envelope["cipher"]["nonce"], validate=True),
    )


def _seal_envelope(der: bytes, passphrase: bytes, n: int, pem_type: str) -> bytes:
    """Write a cosign-style key without the module under test (as older cosign versions did)."""
    salt, nonce = b"s" * 32, b"n" * 24
    key = hashlib.scrypt(passphrase, salt=salt, n=n, r=8, p=1, maxmem=256 * 1024 * 1024, dklen=32)
    sealed = nacl.secret.SecretBox(key).encrypt(der, nonce).ciphertext
    envelope = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": n, "r": 8, "p": 1},
            "salt": base64.b64encode(salt).decode(),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    return _pem(pem_type, json.dumps(envelope).encode())


def _pem(pem_type: str, body: bytes) -> bytes:
    b64 = base64.b64encode(body).decode()
    lines = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {pem_type}-----\n{lines}\n-----END {pem_type}-----\n".encode()


def _raises(code: str, call: Callable[[], object], kind: type[SigningError] = SigningError) -> SigningError:
    with pytest.raises(kind) as caught:
        call()
    assert caught.value.code == code, caught.value
    assert code in ERROR_CODES and ERROR_CODES[code] == type(caught.value).__name__
    return caught.value


# ----------------------------------------------------------------------------------- key files


def test_key_pair_is_p256_in_cosign_file_formats(pair: KeyPair, private_key: signing.PrivateKey) -> None:
    envelope = _envelope(pair.private_pem)
    assert list(envelope) == ["kdf", "cipher", "ciphertext"]
    assert envelope["kdf"]["name"] == "scrypt"
    assert envelope["kdf"]["params"] == {"N": 65536, "r": 8, "p": 1}
    assert len(base64.b64decode(envelope["kdf"]["salt"], validate=True)) == 32
    assert envelope["cipher"]["name"] == "nacl/secretbox"
    assert len(base64.b64decode(envelope["cipher"]["nonce"], validate=True)) == 24

    public = serialization.load_pem_public_key(pair.public_pem)  # a plain PKIX PUBLIC KEY PEM
    assert pair.public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
    assert isinstance(private_key, ec.EllipticCurvePrivateKey)
    assert public_key_pem(private_key) == pair.public_pem
    assert "private_pem" not in repr(pair)


def test_encrypted_key_opens_independently_with_the_passphrase_only(pair: KeyPair) -> None:
    envelope = _envelope(pair.private_pem)
    der = _open_envelope(envelope, PASSPHRASE)
    key = serialization.load_der_private_key(der, password=None)  # PKCS#8 DER inside
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert public_key_pem(key) == pair.public_pem
    with pytest.raises(nacl.exceptions.CryptoError):
        _open_envelope(envelope, PASSPHRASE + b"x")


def test_every_key_gets_a_fresh_salt_and_nonce(private_key: signing.PrivateKey) -> None:
    first = _envelope(encrypt_private_key(private_key, PASSPHRASE))
    second = _envelope(encrypt_private_key(private_key, PASSPHRASE))
    assert first["kdf"]["salt"] != second["kdf"]["salt"]
    assert first["cipher"]["nonce"] != second["cipher"]["nonce"]


def test_wrong_passphrase_is_a_clear_error_without_secrets(pair: KeyPair) -> None:
    wrong = b"hunter2-wrong-passphrase"
    error = _raises(
        "key_passphrase_invalid", lambda: load_private_key(pair.private_pem, wrong), SigningKeyError
    )
    assert "passphrase" in error.message and "COSIGN_PASSWORD" in error.message
    rendered = "".join(traceback.format_exception(error))
    assert "hunter2" not in rendered and "CryptoError" not in rendered
    assert error.__cause__ is None and error.__suppress_context__
    _raises("key_passphrase_invalid", lambda: load_private_key(pair.private_pem, b""), SigningKeyError)


def test_reads_older_cosign_key_pem_type_and_scrypt_parameters() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Older cosign: PEM type "ENCRYPTED COSIGN PRIVATE KEY", N=32768; sealed here without the module.
    legacy = _seal_envelope(der, b"pw", 32768, "ENCRYPTED COSIGN PRIVATE KEY")
    assert public_key_pem(load_private_key(legacy, b"pw")) == public_key_pem(key)
    _raises("key_passphrase_invalid", lambda: load_private_key(legacy, b"other"), SigningKeyError)
    current = _seal_envelope(der, b"", 65536, "ENCRYPTED SIGSTORE PRIVATE KEY")  # cosign allows ""
    assert public_key_pem(load_private_key(current.decode(), b"")) == public_key_pem(key)


def test_unusable_private_key_files_are_refused_before_any_work(pair: KeyPair) -> None:
    envelope = _envelope(pair.private_pem)

    def variant(change: Callable[[dict[str, Any]], None]) -> bytes:
        copy = json.loads(json.dumps(envelope))
        change(copy)
        return _pem("ENCRYPTED SIGSTORE PRIVATE KEY", json.dumps(copy).encode())

    def huge_n(e: dict[str, Any]) -> None:
        e["kdf"]["params"]["N"] = 2**24  # would need 16 GiB: refused without deriving

    def other_cipher(e: dict[str, Any]) -> None:
        e["cipher"]["name"] = "aes-gcm"

    def other_kdf(e: dict[str, Any]) -> None:
        e["kdf"]["name"] = "pbkdf2"

    def short_nonce(e: dict[str, Any]) -> None:
        e["cipher"]["nonce"] = base64.b64encode(b"n" * 12).decode()

    def flipped_ciphertext(e: dict[str, Any]) -> None:
        raw = bytearray(base64.b64decode(e["ciphertext"]))
        raw[-1] ^= 1
        e["ciphertext"] = base64.b64encode(bytes(raw)).decode()

    _raises("key_kdf_unsupported", lambda: load_private_key(variant(huge_n), PASSPHRASE))
    _raises("key_kdf_unsupported", lambda: load_private_key(variant(other_cipher), PASSPHRASE))
    _raises("key_kdf_unsupported", lambda: load_private_key(variant(other_kdf), PASSPHRASE))
    _raises("key_format_invalid", lambda: load_private_key(variant(short_nonce), PASSPHRASE))
    _raises("key_passphrase_invalid", lambda: load_private_key(variant(flipped_ciphertext), PASSPHRASE))
    not_json = _pem("ENCRYPTED SIGSTORE PRIVATE KEY", b"not a key")
    _raises("key_format_invalid", lambda: load_private_key(not_json, PASSPHRASE), SigningKeyError)
    plain = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    error = _raises("key_pem_invalid", lambda: load_private_key(plain, PASSPHRASE))
    assert "'PRIVATE KEY'" in error.message and "ENCRYPTED SIGSTORE PRIVATE KEY" in error.message
    _raises("key_pem_invalid", lambda: load_private_key(b"hello", PASSPHRASE))
    _raises("key_pem_invalid", lambda: load_private_key(pair.public_pem, PASSPHRASE))


def test_public_keys_other_than_p256_or_large_rsa_are_refused() -> None:
    def pem_of(key: Any) -> bytes:
        data: bytes = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return data

    error = _raises(
        "key_algorithm_unsupported", lambda: load_public_key(pem_of(ec.generate_private_key(ec.SECP384R1())))
    )
    assert "secp384r1" in error.message and "P-256" in error.message
    error = _raises(
        "key_algorithm_unsupported", lambda: load_public_key(pem_of(ed25519.Ed25519PrivateKey.generate()))
    )
    assert "P-256" in error.message
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    error = _raises("key_algorithm_unsupported", lambda: load_public_key(pem_of(small_rsa)))
    assert "2048" in error.message
    assert isinstance(load_public_key(pem_of(rsa.generate_private_key(65537, 2048))), rsa.RSAPublicKey)
    assert isinstance(
        load_public_key(pem_of(ec.generate_private_key(ec.SECP256R1()))), ec.EllipticCurvePublicKey
    )
    _raises(
        "key_pem_invalid",
        lambda: load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
    )
    _raises("key_pem_invalid", lambda: load_public_key("no pem here"))
    # P-384 keys are refused for signing too, not only for verifying.
    p384 = ec.generate_private_key(ec.SECP384R1())
    _raises("key_algorithm_unsupported", lambda: sign_digest(p384, BLOB_SHA256))


def test_fingerprint_and_bundle_hint_are_sha256_of_the_der_spki(public_key: signing.PublicKey) -> None:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key_fingerprint(public_key) == hashlib.sha256(der).hexdigest()
    assert key_hint(public_key) == base64.b64encode(hashlib.sha256(der).digest()).decode()
    assert base64.b64decode(key_hint(public_key)).hex() == key_fingerprint(public_key)


# ---------------------------------------------------------------------------------- signatures


def test_sign_and_verify_round_trip(public_key: signing.PublicKey, signature: bytes) -> None:
    assert verify_digest(public_key, BLOB_SHA256, signature) is True
    assert verify_digest(public_key, BLOB_SHA256.upper(), signature) is True
    text = signature_b64(signature)  # cosign's .sig file content
    assert base64.b64decode(text, validate=True) == signature
    assert signature_from_b64(text + "\n") == signature
    assert verify_digest(public_key, BLOB_SHA256, text) is True


def test_signature_is_what_cosign_sign_blob_makes(public_key: signing.PublicKey, signature: bytes) -> None:
    # ECDSA P-256 with SHA-256 over the blob itself (not over the hex digest), DER-encoded.
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(signature, BLOB, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public_key.verify(signature, BLOB_SHA256.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(signature)
    assert signature[0] == 0x30 and 8 <= len(signature) <= 72 and r > 0 and s > 0
    assert signature_b64(signature).startswith("ME")


def test_tampered_digest_or_signature_or_other_key_is_invalid(
    public_key: signing.PublicKey, signature: bytes
) -> None:
    flipped_digest = ("0" if BLOB_SHA256[0] != "0" else "1") + BLOB_SHA256[1:]
    _raises(
        "signature_mismatch", lambda: verify_digest(public_key, flipped_digest, signature), SignatureInvalid
    )
    _raises(
        "signature_mismatch", lambda: verify_digest(public_key, OTHER_SHA256, signature), SignatureInvalid
    )
    r, s = decode_dss_signature(signature)
    altered = encode_dss_signature(r, s ^ 1)
    _raises("signature_mismatch", lambda: verify_digest(public_key, BLOB_SHA256, altered), SignatureInvalid)
    _raises("signature_malformed", lambda: verify_digest(public_key, BLOB_SHA256, signature + b"\x00"))
    # BER instead of DER: a long-form length, and an integer padded with a needless zero byte.
    ber_length = b"\x30\x81" + signature[1:]
    _raises("signature_malformed", lambda: verify_digest(public_key, BLOB_SHA256, ber_length))
    r_der = b"\x02\x22\x00\x00" + r.to_bytes(32, "big")  # never minimal: two leading zero bytes
    s_der = encode_dss_signature(1, s)[5:]  # drop SEQUENCE header and INTEGER 1
    padded = bytes([0x30, len(r_der) + len(s_der)]) + r_der + s_der
    _raises("signature_malformed", lambda: verify_digest(public_key, BLOB_SHA256, padded))
    _raises("signature_malformed", lambda: verify_digest(public_key, BLOB_SHA256, signature[:-3]))
    _raises("signature_malformed", lambda: verify_digest(public_key, BLOB_SHA256, b""))
    _raises("signature_malformed", lambda: verify_digest(public_key, BLOB_SHA256, "not base64!"))
    other = load_public_key(public_key_pem(ec.generate_private_key(ec.SECP256R1())))
    _raises("signature_mismatch", lambda: verify_digest(other, BLOB_SHA256, signature), SignatureInvalid)


def test_digest_must_be_sha256_hex(private_key: signing.PrivateKey, public_key: signing.PublicKey) -> None:
    for bad in ["", BLOB_SHA256[:-1], BLOB_SHA256 + "0", "g" * 64, "sha256:" + BLOB_SHA256]:
        _raises("digest_invalid", functools.partial(sign_digest, private_key, bad))
        error = _raises("digest_invalid", functools.partial(verify_digest, public_key, bad, b"0"))
        assert not isinstance(error, SignatureInvalid)


def test_verify_with_any_names_the_key_that_matched(signature: bytes, pair: KeyPair) -> None:
    others = [public_key_pem(ec.generate_private_key(ec.SECP256R1())) for _ in range(3)]
    expected = key_fingerprint(load_public_key(pair.public_pem))
    for position in range(len(others) + 1):
        trusted = [*others[:position], pair.public_pem, *others[position:]]
        assert verify_with_any(trusted, BLOB_SHA256, signature) == expected
    assert (
        verify_with_any([p.decode() for p in [others[0], pair.public_pem]], BLOB_SHA256, signature)
        == expected
    )
    assert verify_with_any([others[1], pair.public_pem], BLOB_SHA256, signature_b64(signature)) == expected
    _raises("signature_untrusted", lambda: verify_with_any(others, BLOB_SHA256, signature), SignatureInvalid)
    _raises("signature_untrusted", lambda: verify_with_any([pair.public_pem], OTHER_SHA256, signature))
    _raises("trust_store_empty", lambda: verify_with_any([], BLOB_SHA256, signature), SigningKeyError)
    _raises("key_pem_invalid", lambda: verify_with_any([pair.public_pem, b"junk"], BLOB_SHA256, signature))


def test_rsa_keys_sign_pkcs1v15_sha256_and_mix_with_ecdsa_trust(pair: KeyPair) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_signature = sign_digest(rsa_key, BLOB_SHA256)
    rsa_key.public_key().verify(rsa_signature, BLOB, padding.PKCS1v15(), hashes.SHA256())  # independent
    rsa_pem = public_key_pem(rsa_key)
    assert verify_digest(load_public_key(rsa_pem), BLOB_SHA256, rsa_signature)
    # An RSA signature is "malformed" for the ECDSA key listed first; the RSA key must still be found.
    assert verify_with_any([pair.public_pem, rsa_pem], BLOB_SHA256, rsa_signature) == key_fingerprint(
        rsa_key.public_key()
    )
    _raises("signature_malformed", lambda: verify_with_any([pair.public_pem], BLOB_SHA256, rsa_signature))


# ------------------------------------------------------------------------------------- bundles


def test_bundle_has_the_sigstore_v03_shape(public_key: signing.PublicKey, signature: bytes) -> None:
    bundle = make_bundle(BLOB_SHA256, signature, public_key)
    assert bundle == {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": key_hint(public_key)}, "tlogEntries": []},
        "messageSignature": {
            "messageDigest": {
                "algorithm": "SHA2_256",
                "digest": base64.b64encode(bytes.fromhex(BLOB_SHA256)).decode(),
            },
            "signature": base64.b64encode(signature).decode(),
        },
    }
    assert bundle["mediaType"] == BUNDLE_MEDIA_TYPE
    digest_b64 = bundle["messageSignature"]["messageDigest"]["digest"]
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=", digest_b64)  # standard base64 of 32 bytes, padded
    assert base64.b64decode(digest_b64) == hashlib.sha256(BLOB).digest()
    assert json.loads(json.dumps(bundle)) == bundle


def test_bundle_verifies_from_dict_text_and_bytes(
    pair: KeyPair, public_key: signing.PublicKey, signature: bytes
) -> None:
    bundle = make_bundle(BLOB_SHA256, signature, public_key)
    fingerprint = key_fingerprint(public_key)
    assert verify_bundle(bundle, [pair.public_pem], BLOB_SHA256) == fingerprint
    assert verify_bundle(json.dumps(bundle), [pair.public_pem], BLOB_SHA256) == fingerprint
    assert verify_bundle(json.dumps(bundle, indent=2).encode(), [public_key], BLOB_SHA256) == fingerprint
    # Without tlogEntries (protobuf JSON omits empty lists), older media types, URL-safe unpadded bytes.
    variant = json.loads(json.dumps(bundle))
    del variant["verificationMaterial"]["tlogEntries"]
    variant["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.2"
    message = variant["messageSignature"]
    message["signature"] = base64.urlsafe_b64encode(signature).decode().rstrip("=")
    assert verify_bundle(variant, [pair.public_pem], BLOB_SHA256) == fingerprint


def test_make_bundle_refuses_a_signature_that_does_not_verify(
    public_key: signing.PublicKey, signature: bytes
) -> None:
    _raises("signature_mismatch", lambda: make_bundle(OTHER_SHA256, signature, public_key), SignatureInvalid)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    _raises("signature_mismatch", lambda: make_bundle(BLOB_SHA256, signature, other))


def test_tampered_bundles_are_invalid(pair: KeyPair, public_key: signing.PublicKey, signature: bytes) -> None:
    good = make_bundle(BLOB_SHA256, signature, public_key)
    trusted = [pair.public_pem]

    def tampered(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
        copy: dict[str, Any] = json.loads(json.dumps(good))
        change(copy)
        return copy

    def check(code: str, bundle: Any, sha256_hex: str = BLOB_SHA256) -> None:
        _raises(code, lambda: verify_bundle(bundle, trusted, sha256_hex), SignatureInvalid)

    check("bundle_digest_mismatch", good, OTHER_SHA256)  # the bundle of another image
    other_digest = base64.b64encode(bytes.fromhex(OTHER_SHA256)).decode()
    check(
        "bundle_digest_mismatch",
        tampered(lambda b: b["messageSignature"]["messageDigest"].update(digest=other_digest)),
    )
    r, s = decode_dss_signature(signature)
    forged = base64.b64encode(encode_dss_signature(r ^ 1, s)).decode()
    check("signature_untrusted", tampered(lambda b: b["messageSignature"].update(signature=forged)))
    check("bundle_media_type_unsupported", tampered(lambda b: b.update(mediaType="application/json")))
    check(
        "bundle_content_unsupported",
        tampered(lambda b: b["messageSignature"]["messageDigest"].update(algorithm="SHA2_384")),
    )
    check(
        "bundle_content_unsupported",
        tampered(lambda b: b["verificationMaterial"].update(certificate={"rawBytes": "MIIB"})),
    )
    check("bundle_content_unsupported", tampered(lambda b: b.update(dsseEnvelope={"payload": ""})))
    check("bundle_malformed", tampered(lambda b: b.pop("messageSignature")))
    check("bundle_malformed", tampered(lambda b: b["messageSignature"].pop("messageDigest")))
    check("bundle_malformed", tampered(lambda b: b["messageSignature"].update(signature="")))
    check(
        "bundle_malformed", tampered(lambda b: b["messageSignature"]["messageDigest"].update(digest="AAAA"))
    )
    check("bundle_malformed", tampered(lambda b: b["verificationMaterial"].pop("publicKey")))
    check("bundle_malformed", "{not json")
    check("bundle_malformed", "[]")


def test_bundle_key_hint_is_never_trusted(
    pair: KeyPair, public_key: signing.PublicKey, signature: bytes
) -> None:
    # A bundle signed by an outsider names the outsider's key in its hint: still untrusted.
    outsider = ec.generate_private_key(ec.SECP256R1())
    outsider_bundle = make_bundle(BLOB_SHA256, sign_digest(outsider, BLOB_SHA256), outsider.public_key())
    _raises("signature_untrusted", lambda: verify_bundle(outsider_bundle, [pair.public_pem], BLOB_SHA256))
    # A wrong or missing hint does not stop the right trusted key from being found.
    bundle = make_bundle(BLOB_SHA256, signature, public_key)
    bundle["verificationMaterial"]["publicKey"]["hint"] = key_hint(outsider.public_key())
    others = [public_key_pem(ec.generate_private_key(ec.SECP256R1())) for _ in range(2)]
    assert verify_bundle(bundle, [*others, pair.public_pem], BLOB_SHA256) == key_fingerprint(public_key)
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    assert verify_bundle(bundle, [pair.public_pem, *others], BLOB_SHA256) == key_fingerprint(public_key)
    _raises("trust_store_empty", lambda: verify_bundle(bundle, [], BLOB_SHA256), SigningKeyError)


def test_bundle_loads_with_the_sigstore_projects_models(
    public_key: signing.PublicKey, signature: bytes
) -> None:
    """Interop: sigstore-python's strict protobuf models (``extra="forbid"``) parse our bundle."""
    models = pytest.importorskip("sigstore_models.bundle.v1", reason="sigstore (>= 4) not installed")
    bundle = make_bundle(BLOB_SHA256, signature, public_key)
    parsed = models.Bundle.from_json(json.dumps(bundle))
    assert parsed.media_type == BUNDLE_MEDIA_TYPE
    assert parsed.verification_material.public_key.hint == key_hint(public_key)
    assert parsed.verification_material.tlog_entries == []
    assert parsed.message_signature.message_digest.algorithm.value == "SHA2_256"
    assert parsed.message_signature.message_digest.digest == bytes.fromhex(BLOB_SHA256)
    assert parsed.message_signature.signature == signature
    assert json.loads(parsed.to_json()) == bundle  # nothing lost or renamed in the round trip

    # sigstore-python's own Bundle requires a Fulcio certificate and one tlog entry, so a key-only
    # bundle is refused for exactly that reason (sigstore-python issue #1244), not for its shape.
    sigstore_models = pytest.importorskip("sigstore.models")
    try:
        sigstore_models.Bundle.from_json(json.dumps(bundle))
    except sigstore_models.InvalidBundle as exc:
        assert str(exc) == "expected certificate in bundle"


# --------------------------------------------------------------------------------- openssl interop


def _openssl(*args: str | Path, stdin: bytes | None = None) -> bytes:
    assert OPENSSL is not None
    done = subprocess.run(
        [OPENSSL, *map(str, args)], input=stdin, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@needs_openssl
def test_openssl_signature_verifies_with_verify_digest(tmp_path: Path) -> None:
    key, pub, blob, sig = (tmp_path / n for n in ("key.pem", "pub.pem", "blob", "blob.sig"))
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    _openssl("ec", "-in", key, "-pubout", "-out", pub)
    blob.write_bytes(BLOB)
    _openssl("dgst", "-sha256", "-sign", key, "-out", sig, blob)

    public = load_public_key(pub.read_bytes())
    assert verify_digest(public, BLOB_SHA256, sig.read_bytes()) is True
    _raises("signature_mismatch", lambda: verify_digest(public, OTHER_SHA256, sig.read_bytes()))
    bundle = make_bundle(BLOB_SHA256, sig.read_bytes(), public)
    assert verify_bundle(bundle, [pub.read_bytes()], BLOB_SHA256) == key_fingerprint(public)
    spki_der = _openssl("pkey", "-pubin", "-in", pub, "-outform", "DER")
    assert key_fingerprint(public) == hashlib.sha256(spki_der).hexdigest()


@needs_openssl
def test_our_signature_verifies_with_openssl(tmp_path: Path, pair: KeyPair, signature: bytes) -> None:
    pub, blob, sig = tmp_path / "cosign.pub", tmp_path / "blob", tmp_path / "blob.sig"
    pub.write_bytes(pair.public_pem)
    blob.write_bytes(BLOB)
    sig.write_bytes(signature)
    assert b"Verified OK" in _openssl("dgst", "-sha256", "-verify", pub, "-signature", sig, blob)
    blob.write_bytes(BLOB + b"!")
    done = subprocess.run(
        [str(OPENSSL), "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(blob)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and b"verification failure" in done.stdout.lower()


@needs_openssl
def test_openssl_key_imports_into_cosign_format(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)  # SEC1 "EC PRIVATE KEY"
    imported = import_private_key(key.read_bytes())
    stored = encrypt_private_key(imported, b"pw")  # what `cosign import-key-pair` writes
    reloaded = load_private_key(stored, b"pw")
    assert public_key_pem(reloaded) == _openssl("ec", "-in", key, "-pubout")
    encrypted = _openssl("pkcs8", "-topk8", "-in", key, "-passout", "pass:secret", "-v2", "aes-256-cbc")
    assert public_key_pem(import_private_key(encrypted, b"secret")) == public_key_pem(imported)
    _raises("key_passphrase_invalid", lambda: import_private_key(encrypted))
    _raises("key_pem_invalid", lambda: import_private_key(encrypted, b"wrong"))


# ----------------------------------------------------------------------------------- the module


def test_every_error_code_raised_is_declared() -> None:
    source = Path(signing.__file__).read_text()
    raised = set(re.findall(r'(SigningError|SigningKeyError|SignatureInvalid)\(\s*"([a-z_]+)"', source))
    raised.add(("SignatureInvalid", "bundle_malformed"))  # raised through _malformed()
    assert {code for _, code in raised} == set(ERROR_CODES)
    assert all(ERROR_CODES[code] == kind for kind, code in raised)
    assert dataclasses.is_dataclass(KeyPair)
