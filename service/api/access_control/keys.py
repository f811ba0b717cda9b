"""API keys: parsing, the key store (digest → key record), reload on change and on SIGHUP.

A presented key is hashed once (HMAC-SHA256 with the deployment's key-id secret) and looked
up by its digest, then compared with :func:`hmac.compare_digest`: the cost of a check does not
grow with the number of configured keys.  The same digest names the key in logs and metrics:
its id is ``k-`` + the first 8 hex digits, meaningless without the secret (no offline oracle
for anyone who reads logs).  Keys shorter than :data:`MIN_KEY_LENGTH` are refused unless
``allow_short`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from darkpose.service.core.errors import DarkPoseError

logger = logging.getLogger(__name__)

#: Seconds between two stat() calls of the key file (on requests).
FILE_CHECK_INTERVAL_S = 1.0
#: Keys shorter than this are refused at start-up unless short keys are allowed.
MIN_KEY_LENGTH = 16
#: Hex digits of the keyed digest that name a key in logs and metrics.
KEY_ID_HEX = 8


class AccessConfigError(DarkPoseError):
    """An access setting or key file that cannot be used (the service refuses to start)."""

    code = "config_error"


def key_digest(key: str | bytes, secret: bytes) -> bytes:
    """HMAC-SHA256 of ``key`` under the deployment's key-id ``secret`` (32 bytes)."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return hmac.new(secret, raw, hashlib.sha256).digest()


def key_id(key: str | bytes, secret: bytes) -> str:
    """The loggable id of a key: ``k-`` + the first 8 hex digits of its keyed digest."""
    return id_of_digest(key_digest(key, secret))


def id_of_digest(digest: bytes) -> str:
    return "k-" + digest.hex()[:KEY_ID_HEX]


def check_key(key: str, where: str, secret: bytes) -> str:
    """``key`` when it is printable ASCII without spaces, else :class:`AccessConfigError`
    naming ``where`` and the key's id (never the key)."""
    if not key or any(not (0x21 <= ord(ch) <= 0x7E) for ch in key):
        raise AccessConfigError(
            f"{where}: expected a key of printable ASCII without spaces, got "
            f"{len(key)} characters including spaces or non-ASCII ones "
            f"(key id {key_id(key, secret)})"
        )
    return key


def parse_key_list(text: str, secret: bytes = b"") -> list[str]:
    """``DARKPOSE_API_KEYS``: comma-separated keys (spaces around them ignored)."""
    return [
        check_key(part.strip(), f"DARKPOSE_API_KEYS item {i}", secret)
        for i, part in enumerate(text.split(","), start=1)
        if part.strip()
    ]


def parse_key_file(text: str, source: str = "key file", secret: bytes = b"") -> list[str]:
    """One key per line; blank lines and lines starting with ``#`` are skipped; a key may be
    followed by whitespace and a ``# comment``.  Raises :class:`AccessConfigError` naming the
    line (never the key)."""
    keys = []
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, *more = stripped.split(None, 1)
        rest = more[0] if more else ""
        if rest and not rest.startswith("#"):
            raise AccessConfigError(
                f"{source} line {n}: expected one key optionally followed by '# comment', "
                f"got more words after the key"
            )
        keys.append(check_key(key, f"{source} line {n}", secret))
    return keys


def enforce_min_length(keys: Iterable[str], where: str, secret: bytes, allow_short: bool) -> None:
    """Keys under :data:`MIN_KEY_LENGTH` characters: :class:`AccessConfigError` naming their ids
    (never the keys), or one warning when ``allow_short`` (``DARKPOSE_ALLOW_SHORT_KEYS``)."""
    short = sorted({key_id(k, secret) for k in keys if len(k) < MIN_KEY_LENGTH})
    if short and not allow_short:
        raise AccessConfigError(
            f"{where}: expected at least {MIN_KEY_LENGTH} characters, got shorter key(s) "
            f"{', '.join(short)}; use long random keys (`openssl rand -hex 24`) or set "
            "DARKPOSE_ALLOW_SHORT_KEYS=true"
        )
    if short:
        logger.warning(
            "%s: %s shorter than %d characters (allowed by DARKPOSE_ALLOW_SHORT_KEYS)",
            where,
            ", ".join(short),
            MIN_KEY_LENGTH,
        )


class KeyStore:
    """The configured API keys (inline + file), looked up by keyed digest.

    ``enabled`` is fixed at construction: keys inline or a key file configured (an empty or
    unreadable file then refuses everyone: fail closed, never open).  ``secret``: the key-id
    secret (random per store when None).
    """

    def __init__(
        self,
        inline: Sequence[str] = (),
        path: Path | None = None,
        *,
        secret: bytes | None = None,
        allow_short: bool = False,
        clock: Callable[[], float] = time.monotonic,
        check_interval: float = FILE_CHECK_INTERVAL_S,
    ) -> None:
        self.secret = secret if secret is not None else os.urandom(32)
        self.allow_short = allow_short
        self.inline = list(inline)
        self.path = path
        self.enabled = bool(self.inline) or path is not None
        self._clock = clock
        self._check_interval = check_interval
        self._file_sig: tuple[int, int, int] | None = None
        #: keyed digest → (the same digest as stored, key id)
        self._by_digest: dict[bytes, tuple[bytes, str]] = {}
        self.reload_count = 0
        if path is not None:
            self._file_sig = self._stat()
            if self._file_sig is None:
                raise AccessConfigError(
                    f"DARKPOSE_API_KEYS_FILE: expected a readable file, got nothing at {path}"
                )
            self._set(self.inline + self._parse_file())
        else:
            self._set(self.inline)
        self._next_check = self._clock() + self._check_interval

    def key_id(self, key: str | bytes) -> str:
        """The id this store gives ``key`` (configured or not)."""
        return key_id(key, self.secret)

    @property
    def ids(self) -> list[str]:
        """The configured keys' ids (sorted): the bounded set of client metric labels."""
        return sorted({kid for _, kid in self._by_digest.values()})

    def _parse_file(self) -> list[str]:
        return parse_key_file(self._read(), str(self.path), self.secret)

    def _set(self, keys: Sequence[str]) -> None:
        table: dict[bytes, tuple[bytes, str]] = {}
        for k in keys:
            d = key_digest(k, self.secret)
            table[d] = (d, id_of_digest(d))
        enforce_min_length(keys, "API keys", self.secret, self.allow_short)
        self._by_digest = table

    def _stat(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> str:
        if self.path is None:
            return ""
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AccessConfigError(
                f"DARKPOSE_API_KEYS_FILE: expected a readable UTF-8 file, got "
                f"{type(exc).__name__} for {self.path}"
            ) from exc

    def reload(self, reason: str = "request") -> bool:
        """Re-read the key file now; on error keep the current keys.  True when it loaded."""
        if self.path is None:
            return False
        self._file_sig = self._stat()
        before = set(self.ids)
        try:
            self._set(self.inline + self._parse_file())
        except AccessConfigError as exc:
            logger.error("API keys not reloaded (%s), keeping %d: %s", reason, len(self), exc)
            return False
        after = set(self.ids)
        self.reload_count += 1
        logger.info(
            "API keys reloaded (%s) from %s: %d keys, added %s, removed %s",
            reason,
            self.path,
            len(self),
            sorted(after - before) or "none",
            sorted(before - after) or "none",
        )
        return True

    def maybe_reload(self) -> None:
        """Reload when the file's (inode, size, mtime) changed; stat at most once per
        ``check_interval`` seconds."""
        if self.path is None:
            return
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self._check_interval
        if self._stat() != self._file_sig:
            self.reload("file changed")

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, presented: bytes) -> str | None:
        """The id of the configured key equal to ``presented``, else None: one keyed hash, one
        dictionary lookup and one constant-time compare, whatever the number of keys."""
        d = key_digest(presented, self.secret)
        record = self._by_digest.get(d)
        if record is None or not hmac.compare_digest(d, record[0]):
            return None
        return record[1]


# --- SIGHUP -----------------------------------------------------------------------------------
def install_sighup(keys: KeyStore) -> None:
    """SIGHUP reloads ``keys`` (from the running loop; a no-op off the main thread)."""
    sig = getattr(signal, "SIGHUP", None)
    if sig is None or keys.path is None:
        return
    try:
        asyncio.get_running_loop().add_signal_handler(sig, keys.reload, "SIGHUP")
    except (ValueError, RuntimeError, NotImplementedError) as exc:  # not the main thread
        logger.debug("no SIGHUP reload of API keys here (%s); file changes still reload", exc)
        return
    logger.debug("SIGHUP reloads the API keys from %s", keys.path)


def remove_sighup(keys: KeyStore) -> None:
    sig = getattr(signal, "SIGHUP", None)
    if sig is None or keys.path is None:
        return
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        asyncio.get_running_loop().remove_signal_handler(sig)
