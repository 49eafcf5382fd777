"""Pseudonymize user ids with HMAC-SHA256 before they reach any output table.

The key comes from the environment variable named by `privacy.key_env`, never from the
repository or the logs. Without it, local profiles fall back to a fixed development key that is
public by design and marks every id it produces as development-only; profiles that set
`privacy.allow_dev_key: false` refuse to start.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os

from pyspark.sql import Column
from pyspark.sql import functions as F

from behaviorgpt.config import PrivacyConfig

log = logging.getLogger(__name__)

DEVELOPMENT_KEY = b"behaviorgpt-development-key-not-secret"
"""Public key for local runs only: anyone can recompute ids made with it."""

_BLOCK_SIZE = 64  # SHA-256 block size in bytes, as HMAC (RFC 2104) requires.


class MissingKeyError(RuntimeError):
    """The pseudonymization key is required but not set."""


def pseudonymization_key(config: PrivacyConfig) -> bytes:
    """Read the HMAC key from the environment; use the development key only where allowed."""
    value = os.environ.get(config.key_env, "")
    if value:
        return value.encode("utf-8")
    if not config.allow_dev_key:
        raise MissingKeyError(
            f"environment variable {config.key_env} is not set and privacy.allow_dev_key is false. "
            f"Fix: export {config.key_env} from your secret store before starting the job.")
    log.warning("%s is not set: using the public development key; user keys are not private",
                config.key_env)
    return DEVELOPMENT_KEY


def pseudonymize(value: str, key: bytes) -> str:
    """HMAC-SHA256 of a UTF-8 string as 64 lowercase hex characters (reference implementation)."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymize_column(column: Column, key: bytes) -> Column:
    """HMAC-SHA256 of a string column as hex, computed by Spark's built-in SHA-256.

    Spark SQL has no HMAC function, and a Python UDF would move every row through a Python
    worker, so this builds HMAC from its definition: sha256((K ^ opad) || sha256((K ^ ipad) || m)).
    The result equals `pseudonymize` byte for byte (tested). A null input gives null.

    NOTE: the padded key forms appear as binary literals in the query plan, so anyone who can
    read the plan (Spark UI, debug logs) can recompute pseudonyms. Keep the UI private.
    """
    if len(key) > _BLOCK_SIZE:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK_SIZE, b"\x00")
    inner_pad = bytes(byte ^ 0x36 for byte in key)
    outer_pad = bytes(byte ^ 0x5C for byte in key)

    message = F.encode(column, "UTF-8")
    inner_hash = F.unhex(F.sha2(F.concat(F.lit(inner_pad), message), 256))
    return F.sha2(F.concat(F.lit(outer_pad), inner_hash), 256)


_ID_CHARACTER = r"[\p{L}\p{N}_.-]"
"""Characters that continue an id token: a match must not touch one on either side."""


def redact_raw_line(raw_line: Column, identities: list[Column], *, parsed: Column,
                    key: bytes) -> Column:
    """Return the raw line with every identifying id replaced by its pseudonym.

    When the line parsed far enough (`parsed` is true), each whole-token occurrence of each
    non-null value of `identities` (the raw user id, the source session id) is replaced by
    `pseudonymize` of it, the same value that `events.user_key` and `session_key` carry, so
    a quarantined line still links to the user's accepted events. When it did not, the
    user's id may sit anywhere in it, so only `<redacted line: N characters, HMAC-SHA256
    hex>` is kept: the digest tells equal lines apart and the length hints at truncation,
    but neither identifies the user.

    NOTE: a line split into more fields than the format has may hold the raw id in another
    field than the user column; it is replaced only where it equals the parsed user field.
    """
    redacted = raw_line
    for identity in identities:
        # \Q...\E quotes the id for Java regex; an id containing \E is split around it.
        quoted = F.concat(F.lit("\\Q"), F.replace(identity, F.lit("\\E"),
                                                    F.lit("\\E\\\\E\\Q")), F.lit("\\E"))
        pattern = F.concat(F.lit(f"(?<!{_ID_CHARACTER})"), quoted, F.lit(f"(?!{_ID_CHARACTER})"))
        replaced = F.regexp_replace(redacted, pattern, pseudonymize_column(identity, key))
        redacted = F.when(identity.isNull() | (identity == ""), redacted).otherwise(replaced)

    digest = F.concat(F.lit("<redacted line: "), F.length(raw_line).cast("string"),
                      F.lit(" characters, HMAC-SHA256 "), pseudonymize_column(raw_line, key),
                      F.lit(">"))
    return F.when(parsed, redacted).otherwise(digest)
