"""The local-encrypted backend: AES-256-GCM under a random master key kept in ``secret.key``.

Used when no OS keyring can hold the key. The ciphertext lives in config.toml; the 32-byte master key
lives beside it, created 0600 at open (no chmod race) and never overwritten. A master key that others
can read, or that is the wrong size, is refused rather than used or replaced. A changed or truncated
blob is reported as a clear SecretStoreError: never a crash, never a silent overwrite.
``cryptography`` is imported only when something is encrypted or decrypted.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import stat
from pathlib import Path

from convocationsd.common.trust import make_private_dir
from convocationsd.core.errors import SecretStoreError
from convocationsd.store.configfile import fsync_dir

KEY_FILE = "secret.key"
KEY_BYTES = 32
NONCE_BYTES = 12
# Binds each blob to what it holds and to this format, so it cannot be replayed elsewhere.
AAD = b"convocations/openrouter_api_key/v1"


class LocalEncrypted:
    """Encrypts and decrypts the OpenRouter key with the master key at ``key_path``."""

    def __init__(self, key_path: Path) -> None:
        self.key_path = Path(key_path)

    def encrypt(self, key: str) -> tuple[str, str]:
        """Returns ``(nonce, ciphertext)`` as base64 text; creates secret.key when it is missing."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        master = self._master_key(create=True)
        nonce = os.urandom(NONCE_BYTES)  # fresh for every write (os.urandom is what secrets.token_bytes calls)
        ciphertext = AESGCM(master).encrypt(nonce, key.encode("utf-8"), AAD)
        return _b64(nonce), _b64(ciphertext)

    def decrypt(self, nonce: object, ciphertext: object, *, where: str = "config.toml") -> str:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        again = "Store the key again with `convctl secret set-openrouter-key` (nothing was overwritten)."
        try:
            raw_nonce = _unb64(nonce)
            raw_ct = _unb64(ciphertext)
        except ValueError:
            raise SecretStoreError(
                f"The encrypted OpenRouter key in {where} is damaged (nonce or ciphertext is not valid base64).", again
            ) from None
        if len(raw_nonce) != NONCE_BYTES or len(raw_ct) <= 16:
            raise SecretStoreError(
                f"The encrypted OpenRouter key in {where} is damaged (nonce or ciphertext has the wrong length).", again
            )
        master = self._master_key(create=False)
        try:
            plain = AESGCM(master).decrypt(raw_nonce, raw_ct, AAD)
            return plain.decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise SecretStoreError(
                f"The encrypted OpenRouter key in {where} cannot be decrypted: it was changed or truncated, "
                f"or {self.key_path} is not the key it was written with.",
                again,
            ) from None

    # -- the master key ------------------------------------------------------------------------

    def _master_key(self, *, create: bool) -> bytes:
        try:
            return self._read()
        except FileNotFoundError:
            if not create:
                raise SecretStoreError(
                    f"The OpenRouter key is stored encrypted, but its master key {self.key_path} is missing.",
                    "Restore that file from a backup, or store the key again with `convctl secret set-openrouter-key`.",
                ) from None
        self._create()
        return self._read()

    def _read(self) -> bytes:
        path = self.key_path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise SecretStoreError(
                    f"{path} is a symbolic link; refusing to use it as the master key.",
                    "Replace it with the file itself (mode 0600).",
                ) from None
            raise SecretStoreError(f"Cannot read {path}: {e.strerror or e}.", "Check its owner and permissions.") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SecretStoreError(
                    f"{path} is not a regular file; refusing to use it as the master key.",
                    "Move it away; a new master key is created on the next store.",
                )
            if st.st_uid != os.geteuid():
                raise SecretStoreError(
                    f"{path} is owned by another user; refusing to use it.", f"Run: chown {os.geteuid()} {path}"
                )
            if st.st_mode & 0o077:
                raise SecretStoreError(
                    f"{path} can be accessed by other users (mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it.",
                    f"Run: chmod 600 {path}",
                )
            data = os.read(fd, KEY_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) != KEY_BYTES:
            raise SecretStoreError(
                f"{path} is {st.st_size} bytes long, not the {KEY_BYTES} of a master key; "
                "refusing to use or replace it.",
                "Restore it from a backup; if no key was stored with the local-encrypted backend, delete it.",
            )
        return data

    def _create(self) -> None:
        """Writes a new master key, complete, before it becomes visible; never replaces an existing one.

        The key is written to a temp file made 0600 by ``open`` itself, then hard-linked into place:
        ``link`` fails if secret.key appeared meanwhile, and a reader never sees a half-written key."""
        path = self.key_path
        directory = path.parent
        try:
            make_private_dir(directory)
            tmp = directory / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                try:
                    os.write(fd, os.urandom(KEY_BYTES))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass  # another process created it first: use theirs
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                        raise
                    self._create_directly()  # a filesystem without hard links
            finally:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            fsync_dir(directory)
        except OSError as e:
            raise SecretStoreError(
                f"Cannot create the master key {path}: {e.strerror or e}.",
                "Check the directory's permissions and free space.",
            ) from e

    def _create_directly(self) -> None:
        try:
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return
        try:
            os.write(fd, os.urandom(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not base64") from None
