"""Standard Webhooks signatures: the secrets file, and the headers that sign a request.

Every request carries ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``;
the signature is an HMAC-SHA256 of ``id.timestamp.body`` with each configured secret,
so that while a secret is being rotated (two lines in the file) a subscriber holding
either one verifies the request. Nothing here logs or says a secret's value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import threading
import time
from typing import Callable, Iterable, Optional

LOG = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
_BASE64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


class SecretError(ValueError):
    """The secrets cannot be used; the message says why (never what they are)."""


def new_secret(size: int = 32) -> str:
    """A new secret as a secrets file holds it: ``whsec_`` and ``size`` random bytes in
    base64 (what ``echo "whsec_$(head -c 32 /dev/urandom | base64)"`` writes)."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(size)).decode()


def parse_secrets(text: str) -> tuple[bytes, ...]:
    """The secrets a secrets file holds, in its order: one per line, ``whsec_`` then the
    secret in base64 (standard alphabet, the trailing ``=`` optional); empty lines and
    ``#`` comments (a whole line or its end) are skipped. At least one. Raises
    SecretError naming the first bad line's number."""
    secrets = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            secrets.append(_parse_secret(line, number))
    if not secrets:
        raise SecretError("no secret: every line is empty or a comment")
    return tuple(secrets)


def _parse_secret(line: str, number: int) -> bytes:
    if not line.startswith(SECRET_PREFIX):
        raise SecretError(f"line {number}: a secret is {SECRET_PREFIX!r} then base64")
    encoded = line[len(SECRET_PREFIX):]
    if not encoded or not set(encoded) <= _BASE64_ALPHABET:
        raise SecretError(f"line {number}: not base64 (standard alphabet) after "
                          f"{SECRET_PREFIX!r}")
    stripped = encoded.rstrip("=")
    if "=" in stripped or len(encoded) - len(stripped) > 2:
        raise SecretError(f"line {number}: misplaced '=' padding")
    try:
        secret = base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"line {number}: not base64 (its length is impossible)") from None
    if not secret:
        raise SecretError(f"line {number}: empty secret")
    return secret


def signature(secrets: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>`` of
    ``f"{msg_id}.{timestamp}."`` and the body under each secret, space-separated."""
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    return " ".join(
        f"{SIGNATURE_VERSION},"
        + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode("ascii")
        for secret in secrets)


def headers(secrets: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> dict:
    """The three Standard Webhooks headers for one attempt (``timestamp``: Unix seconds
    when it is sent; a subscriber refuses one more than five minutes away from its
    clock)."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(int(timestamp)),
        SIGNATURE_HEADER: signature(secrets, msg_id, timestamp, body),
    }


class SecretFile:
    """The secrets of a file, re-read when it changes, so that rotating a secret is
    rewriting the file (best by renaming a complete new file over it) without a
    restart.

    ``secrets()`` looks at the file at most every ``check_interval`` seconds (a stat)
    and re-reads it when its inode, size or modification time changed. A new content
    that is not valid, or a file gone, leaves the last good secrets in use and is
    logged as an error once per version of the file. Raises SecretError at
    construction if the file cannot be read or holds no valid secrets. Safe to call
    from any thread."""

    def __init__(self, path: str, check_interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.path = path
        self._check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        try:
            version, self._secrets = self._read()
        except OSError as exc:
            raise SecretError(f"secret file {path}: cannot read it: "
                              f"{exc.strerror or exc}") from None
        except SecretError as exc:
            raise SecretError(f"secret file {path}: {exc}") from None
        self._version: Optional[tuple] = version  # the version last looked at
        self._checked = clock()

    def secrets(self) -> tuple[bytes, ...]:
        """The current secrets (one or more)."""
        with self._lock:
            now = self._clock()
            if now - self._checked >= self._check_interval:
                self._checked = now
                self._check()
            return self._secrets

    def _check(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            self._bad(("missing", exc.errno), f"cannot read it: {exc.strerror or exc}")
            return
        if _version(stat) == self._version:
            return
        try:
            version, secrets = self._read()
        except OSError as exc:
            self._bad(("unreadable", _version(stat)), f"cannot read it: {exc.strerror or exc}")
            return
        except SecretError as exc:
            self._bad(_version_of_error(exc, stat), str(exc))
            return
        self._version = version
        changed = secrets != self._secrets
        self._secrets = secrets
        if changed:
            LOG.info("secret file %s re-read: %d secret(s) now sign each request",
                     self.path, len(secrets))

    def _bad(self, version: tuple, why: str) -> None:
        if version != self._version:
            self._version = version
            LOG.error("secret file %s: %s; still signing with the %d secret(s) read "
                      "before", self.path, why, len(self._secrets))

    def _read(self) -> tuple[tuple, tuple[bytes, ...]]:
        """The file's version (of the descriptor read, so that a file replaced while
        being read is read again at the next check) and its secrets."""
        with open(self.path, "rb") as f:
            version = _version(os.fstat(f.fileno()))
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _VersionedSecretError("not UTF-8 text", version) from None
        try:
            return version, parse_secrets(text)
        except SecretError as exc:
            raise _VersionedSecretError(str(exc), version) from None


class _VersionedSecretError(SecretError):
    def __init__(self, message: str, version: tuple):
        super().__init__(message)
        self.version = version


def _version_of_error(exc: SecretError, stat: os.stat_result) -> tuple:
    return getattr(exc, "version", None) or _version(stat)


def _version(stat: os.stat_result) -> tuple:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
