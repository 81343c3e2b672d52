"""Keep secrets out of every message: URL passwords are masked in what seedq prints and logs.

Messages that name a URL use :func:`seedq.settings.mask_url`. As a second line of defence
(exception texts of redis, psycopg and SQLAlchemy, RQ's logs, a traceback), the CLI writes
its stderr through :class:`RedactingStream` and logging through :class:`RedactingFilter`:
both mask ``scheme://user:password@`` and ``password=...`` anywhere in the text and remove
the passwords of the configured URLs (``SEEDQ_*_URL``) wherever they appear.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO
from urllib.parse import unquote

from seedq.settings import url_password

MASK = "***"
URL_ENV = ("SEEDQ_REDIS_URL", "SEEDQ_DATABASE_URL", "SEEDQ_QUERY_DATABASE_URL")
MIN_LITERAL = 4  # shorter passwords are only masked inside URLs (they would hit plain words)
_URL_CREDS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)([^@\s'\"]+)(@)")
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s&'\",)]+)", re.I)


def secrets_of(urls: Iterable[str | None]) -> list[str]:
    """The passwords of ``urls`` (raw and percent-decoded), longest first."""
    found: set[str] = set()
    for url in urls:
        password = url_password(url) if url else None
        if password:
            found.update({password, unquote(password)})
    return sorted((s for s in found if len(s) >= MIN_LITERAL), key=len, reverse=True)


def env_secrets(env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    return secrets_of(env.get(name) for name in URL_ENV)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL credentials, ``password=`` values and ``secrets`` masked."""
    if not text:
        return text
    text = _URL_CREDS.sub(rf"\g<1>{MASK}\g<3>", text)
    text = _PASSWORD_KV.sub(rf"\g<1>{MASK}", text)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's final message (arguments and exception text)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = redact(message, self.secrets), None
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


class RedactingStream(io.TextIOBase):
    """A text stream that masks secrets before writing to ``inner`` (line-buffered)."""

    def __init__(self, inner: TextIO, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = list(secrets)
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            self.inner.write(redact(done + "\n", self.secrets))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.inner.write(redact(self._pending, self.secrets))
            self._pending = ""
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def install(urls: Iterable[str | None] = ()) -> None:
    """Route this process's stderr and every log record through the redaction above; the
    passwords of ``SEEDQ_*_URL`` and of ``urls`` are removed wherever they appear."""
    found = sorted({*env_secrets(), *secrets_of(urls)}, key=len, reverse=True)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr, found)
    else:
        sys.stderr.secrets = found
    _install_record_factory(found)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(found))


_BASE_FACTORY = logging.getLogRecordFactory()


def _install_record_factory(secrets: list[str]) -> None:
    """Every log record, whichever logger and handler, has its message masked."""

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = _BASE_FACTORY(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return record
        record.msg, record.args = redact(message, secrets), None
        return record

    logging.setLogRecordFactory(factory)
