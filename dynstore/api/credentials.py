"""The access keys a dynstore endpoint accepts, and where they come from.

Sources, in the order ``Credentials.load`` reads them:

* the environment: ``DYNSTORE_ACCESS_KEY_ID`` and ``DYNSTORE_SECRET_ACCESS_KEY`` (one key);
* a credentials file in the format of ``~/.aws/credentials``: INI sections, each with
  ``aws_access_key_id`` and ``aws_secret_access_key`` (any number of keys)::

      [reader]
      aws_access_key_id = AKIAEXAMPLEREADER001
      aws_secret_access_key = ...

When neither names a key, the fixed development pair below is accepted instead, and only
from loopback peers: it is printed by ``dynstore up`` and known to everybody, so it must
never open a port that other machines reach.

Secrets are kept in this object only. ``repr`` shows key ids, never secrets, so that a
``Credentials`` printed in a log or a traceback reveals nothing.
"""
from __future__ import annotations

import configparser
import os
from typing import Mapping

DEVELOPMENT_ACCESS_KEY_ID = "DYNSTORELOCALDEVKEY1"
DEVELOPMENT_SECRET_ACCESS_KEY = "dynstore/local/development/secret/key000"

ENV_ACCESS_KEY_ID = "DYNSTORE_ACCESS_KEY_ID"
ENV_SECRET_ACCESS_KEY = "DYNSTORE_SECRET_ACCESS_KEY"


class CredentialsError(ValueError):
    """The configured credentials cannot be used; the message says what to fix."""


class Credentials:
    """Access key id -> secret, plus whether the development pair is accepted on loopback."""

    __slots__ = ("_secrets", "development")

    def __init__(self, keys: Mapping[str, str], *, development: bool = False):
        for key_id, secret in keys.items():
            if not key_id or not secret:
                raise CredentialsError("an access key id and its secret must both be non-empty")
        self._secrets = dict(keys)
        self.development = development

    @classmethod
    def development_only(cls) -> "Credentials":
        return cls({}, development=True)

    @classmethod
    def from_file(cls, path: str) -> "Credentials":
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f)
        except (OSError, configparser.Error) as e:
            raise CredentialsError(f"cannot read credentials file {path}: {e}") from None
        keys = {}
        for section in parser.sections():
            key_id = parser.get(section, "aws_access_key_id", fallback="").strip()
            secret = parser.get(section, "aws_secret_access_key", fallback="").strip()
            if not key_id or not secret:
                raise CredentialsError(
                    f"section [{section}] of {path} needs both aws_access_key_id and aws_secret_access_key")
            keys[key_id] = secret
        if not keys:
            raise CredentialsError(f"credentials file {path} holds no [section] with an access key")
        return cls(keys)

    @classmethod
    def load(cls, path: str | None = None, environ: Mapping[str, str] = os.environ) -> "Credentials":
        """The keys from the environment and ``path``; the development pair when there are none."""
        keys = {}
        key_id, secret = environ.get(ENV_ACCESS_KEY_ID, ""), environ.get(ENV_SECRET_ACCESS_KEY, "")
        if bool(key_id) != bool(secret):
            raise CredentialsError(f"set both {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY}, or neither")
        if key_id:
            keys[key_id] = secret
        if path is not None:
            keys.update(cls.from_file(path)._secrets)
        return cls(keys) if keys else cls.development_only()

    @property
    def configured(self) -> bool:
        """True when at least one key besides the development pair is accepted."""
        return bool(self._secrets)

    def secret(self, key_id: str, peer_is_loopback: bool) -> str | None:
        """The secret of ``key_id``, or None when that key is not accepted from this peer."""
        secret = self._secrets.get(key_id)
        if secret is None and self.development and peer_is_loopback and key_id == DEVELOPMENT_ACCESS_KEY_ID:
            return DEVELOPMENT_SECRET_ACCESS_KEY
        return secret

    def __repr__(self) -> str:
        return f"Credentials(key_ids={sorted(self._secrets)!r}, development={self.development})"
