"""AWS Signature Version 4, one canonicalization for both sides: the server verifies with it
and dynstore's client signs with it, so the two cannot drift apart.

Wire format, header form (what boto3 and the AWS CLI send)::

    Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<yyyymmdd>/<region>/<service>/aws4_request,
                   SignedHeaders=<h1;h2;...>, Signature=<64 hex digits>
    X-Amz-Date: <yyyymmddThhmmssZ>              (or an RFC 7231 Date: header)

Query form (a presigned URL): the same facts in ``X-Amz-Algorithm``, ``X-Amz-Credential``,
``X-Amz-Date``, ``X-Amz-Expires``, ``X-Amz-SignedHeaders`` and ``X-Amz-Signature``.

The signature is ``HMAC(signing key, string to sign)`` where::

    signing key    = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, yyyymmdd), region), service), "aws4_request")
    string to sign = "AWS4-HMAC-SHA256\\n" + amz date + "\\n" + scope + "\\n" + hex(sha256(canonical request))
    canonical request = method \\n canonical path \\n canonical query \\n
                        name:value\\n for each signed header \\n signed header list \\n payload hash

Faults handled: replayed or stale requests (a 15-minute window around the server clock,
``X-Amz-Expires`` for presigned URLs), body tampering (the payload hash is recomputed from
the bytes received), unknown or development keys from non-loopback peers, malformed
headers (each gets DynamoDB's own error and message). Secrets never leave ``Credentials``:
error messages quote only what the client sent.
"""
from __future__ import annotations

import calendar
import functools
import hashlib
import hmac
import re
import time
from email.utils import parsedate_tz, mktime_tz
from urllib.parse import quote, unquote

from dynstore import limits
from dynstore.api.credentials import Credentials
from dynstore.api.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
SERVICE = "dynamodb"

_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_AUTH_SEPARATORS = re.compile(r"[,\s]+")  # between the key=value pairs of an Authorization header


def amz_date(epoch: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.digest(key, text.encode("utf-8"), "sha256")


@functools.lru_cache(maxsize=limits.SIGV4_SIGNING_KEYS_CACHED_MAX)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The day's signing key; cached, because it costs four HMACs and changes once a day.

    Signers (the client, the load generator) and the verifier share the cache.
    """
    key = _hmac(("AWS4" + secret).encode("utf-8"), date)
    return _hmac(_hmac(_hmac(key, region), service), TERMINATOR)


def canonical_path(raw_path: str) -> str:
    """The path as SigV4 signs it: dot segments and repeated slashes removed, then encoded
    once more (botocore and the AWS services agree on this for every service but S3)."""
    if not raw_path:
        return "/"
    if raw_path == "/":
        return raw_path
    segments = []
    for part in raw_path.split("/"):
        if part == "..":
            if segments:
                segments.pop()
        elif part and part != ".":
            segments.append(part)
    path = ("/" if raw_path[0] == "/" else "") + "/".join(segments)
    if raw_path[-1] == "/" and segments:
        path += "/"
    return quote(path, safe="/~")


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs in the order sent; ``+`` is a literal plus, as in SigV4."""
    pairs = []
    if raw_query:
        for part in raw_query.split("&"):
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


def canonical_query(pairs: list[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "&".join(f"{n}={v}" for n, v in sorted((_encode(n), _encode(v)) for n, v in pairs))


def canonical_request(method: str, raw_path: str, query: str, headers: dict[str, str],
                      signed_headers: list[str], payload_hash: str) -> str:
    """``headers`` maps lower-case names to values (repeated headers joined with ',')."""
    lines = [method, canonical_path(raw_path), query]
    for name in signed_headers:
        lines.append(f"{name}:{' '.join(headers.get(name, '').split())}")
    lines.append("")
    lines.append(";".join(signed_headers))
    lines.append(payload_hash)
    return "\n".join(lines)


def _signature(key: bytes, date: str, scope: str, request: str) -> str:
    text = f"{ALGORITHM}\n{date}\n{scope}\n{hashlib.sha256(request.encode('utf-8')).hexdigest()}"
    return _hmac(key, text).hex()


# --- signing (the client side) ---------------------------------------------------------


def sign(method: str, raw_path: str, raw_query: str, headers: dict[str, str], body: bytes,
         key_id: str, secret: str, region: str, *, now: float, service: str = SERVICE) -> dict[str, str]:
    """The headers to add to a request: ``X-Amz-Date`` and ``Authorization``.

    ``headers`` (lower-case names) must hold every header that will be sent, ``host`` included;
    all of them are signed.
    """
    date = amz_date(now)
    signed = dict(headers)
    signed["x-amz-date"] = date
    names = sorted(signed)
    scope = f"{date[:8]}/{region}/{service}/{TERMINATOR}"
    request = canonical_request(method, raw_path, canonical_query(parse_query(raw_query)), signed, names,
                                hashlib.sha256(body).hexdigest())
    sig = _signature(signing_key(secret, date[:8], region, service), date, scope, request)
    return {
        "X-Amz-Date": date,
        "Authorization": f"{ALGORITHM} Credential={key_id}/{scope}, SignedHeaders={';'.join(names)}, Signature={sig}",
    }


def presign(method: str, raw_path: str, headers: dict[str, str], body: bytes, key_id: str, secret: str,
            region: str, *, now: float, expires_s: int, service: str = SERVICE) -> str:
    """The query string of a presigned request; ``headers`` (lower-case, ``host`` included) are signed.

    Outside S3, AWS signs the payload of a presigned request like any other: the URL is good
    for this ``body`` only."""
    date = amz_date(now)
    names = sorted(headers)
    scope = f"{date[:8]}/{region}/{service}/{TERMINATOR}"
    pairs = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{key_id}/{scope}"),
        ("X-Amz-Date", date),
        ("X-Amz-Expires", str(expires_s)),
        ("X-Amz-SignedHeaders", ";".join(names)),
    ]
    query = canonical_query(pairs)
    request = canonical_request(method, raw_path, query, headers, names, hashlib.sha256(body).hexdigest())
    sig = _signature(signing_key(secret, date[:8], region, service), date, scope, request)
    return f"{query}&X-Amz-Signature={sig}"


# --- verification (the server side) ----------------------------------------------------


def _bad_date(text: str | None) -> IncompleteSignatureException:
    return IncompleteSignatureException(
        f"Date must be in ISO-8601 'basic format'. Got '{text}'. See http://en.wikipedia.org/wiki/ISO_8601")


def _payload_hash(headers: dict[str, str], body: bytes) -> str:
    """The payload hash the client signed: its x-amz-content-sha256 header when sent (which
    must then match the body, or be UNSIGNED-PAYLOAD), else the hash of the body received."""
    actual = hashlib.sha256(body).hexdigest()
    claimed = headers.get("x-amz-content-sha256")
    if claimed is None or claimed == actual:
        return actual
    if claimed == UNSIGNED_PAYLOAD:
        return claimed
    # The client signed a different body than the one that arrived.
    raise InvalidSignatureException()

_QUERY_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-SignedHeaders", "X-Amz-Date")


class Verifier:
    """Checks SigV4 signatures against ``credentials``; one per server, not thread-safe."""

    def __init__(self, credentials: Credentials, *, service: str = SERVICE,
                 skew_s: int = limits.SIGV4_CLOCK_SKEW_S):
        self.credentials = credentials
        self.service = service
        self.skew_s = skew_s
        self._date_text = ""
        self._date_epoch = 0

    def verify(self, method: str, raw_path: str, raw_query: str, headers: dict[str, str], body: bytes, *,
               peer_is_loopback: bool, now: float) -> str:
        """The access key id that signed the request; raises DynamoDB's error otherwise.

        ``headers`` maps lower-case names to values; ``body`` is the payload as received.
        """
        auth = headers.get("authorization")
        presigned = "X-Amz-Algorithm=" in raw_query
        if auth is not None and presigned:
            raise InvalidSignatureException(
                "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header.")
        if presigned:
            return self._verify_query(method, raw_path, raw_query, headers, body, peer_is_loopback, now)
        if auth is None or not auth.lstrip().startswith("AWS4-"):
            raise MissingAuthenticationTokenException()
        return self._verify_header(method, raw_path, raw_query, headers, body, auth, peer_is_loopback, now)

    def _verify_header(self, method, raw_path, raw_query, headers, body, auth, peer_is_loopback, now) -> str:
        algorithm, _, rest = auth.strip().partition(" ")
        params = {}
        for part in _AUTH_SEPARATORS.split(rest):  # DynamoDB takes commas, spaces, or both, between them
            if not part:
                continue
            name, eq, value = part.partition("=")
            if not eq:
                raise IncompleteSignatureException(
                    f"'{name}' not a valid key=value pair (missing equal-sign) in Authorization header: '{auth}'.")
            params[name.strip()] = value.strip()
        date_header = headers.get("x-amz-date")
        complete = "Credential" in params and "Signature" in params and "SignedHeaders" in params
        if date_header is None or not complete:
            missing = "".join(f"Authorization header requires '{p}' parameter. "
                              for p in ("Credential", "Signature", "SignedHeaders") if p not in params)
            if date_header is None and "date" not in headers:
                missing += "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
            if missing:
                raise IncompleteSignatureException(f"{missing}Authorization={auth}")
        date, epoch = self._request_date(date_header, headers.get("date"))
        if epoch < now - self.skew_s:
            raise InvalidSignatureException(
                f"Signature expired: {date} is now earlier than {amz_date(now - self.skew_s)} "
                f"({amz_date(now)} - {self.skew_s // 60} min.)")
        if epoch > now + self.skew_s:
            raise InvalidSignatureException(
                f"Signature not yet current: {date} is still later than {amz_date(now + self.skew_s)} "
                f"({amz_date(now)} + {self.skew_s // 60} min.)")
        return self._check(method, raw_path, canonical_query(parse_query(raw_query)), headers,
                           params["SignedHeaders"].split(";"), _payload_hash(headers, body), algorithm,
                           params["Credential"], date, params["Signature"], peer_is_loopback)

    def _verify_query(self, method, raw_path, raw_query, headers, body, peer_is_loopback, now) -> str:
        pairs = parse_query(raw_query)
        params = dict(pairs)
        missing = "".join(f"AWS query-string parameters must include '{p}'. "
                          for p in _QUERY_PARAMS if not params.get(p))
        if missing:
            raise IncompleteSignatureException(f"{missing}Re-examine the query-string parameters.")
        date, epoch = self._request_date(params["X-Amz-Date"], None)
        expires = params.get("X-Amz-Expires", "")
        if not expires.isdigit() or not 0 < int(expires) <= limits.SIGV4_PRESIGNED_EXPIRES_S_MAX:
            raise IncompleteSignatureException(
                f"X-Amz-Expires must be a whole number of seconds from 1 to "
                f"{limits.SIGV4_PRESIGNED_EXPIRES_S_MAX}, not '{expires}'.")
        if epoch + int(expires) < now:
            raise InvalidSignatureException(
                f"Signature expired: {amz_date(epoch + int(expires))} is now earlier than {amz_date(now)} "
                f"({date} + {expires} sec.)")
        if epoch > now + self.skew_s:
            raise InvalidSignatureException(
                f"Signature not yet current: {date} is still later than {amz_date(now + self.skew_s)} "
                f"({amz_date(now)} + {self.skew_s // 60} min.)")
        query = canonical_query([(n, v) for n, v in pairs if n != "X-Amz-Signature"])
        return self._check(method, raw_path, query, headers, params["X-Amz-SignedHeaders"].split(";"),
                           _payload_hash(headers, body), params["X-Amz-Algorithm"], params["X-Amz-Credential"], date,
                           params["X-Amz-Signature"], peer_is_loopback)

    def _request_date(self, amz: str | None, http_date: str | None) -> tuple[str, int]:
        """The request's date as ``yyyymmddThhmmssZ`` and as epoch seconds."""
        if amz is None:
            parsed = parsedate_tz(http_date or "")
            if parsed is None:
                raise _bad_date(http_date)
            epoch = mktime_tz(parsed)
            return amz_date(epoch), epoch
        if amz != self._date_text:
            if not _AMZ_DATE.fullmatch(amz):
                raise _bad_date(amz)
            try:
                epoch = calendar.timegm(time.strptime(amz, "%Y%m%dT%H%M%SZ"))
            except ValueError:
                raise _bad_date(amz) from None
            self._date_text, self._date_epoch = amz, epoch
        return amz, self._date_epoch

    def _check(self, method, raw_path, query, headers, signed_headers, payload_hash, algorithm, credential,
               date, signature, peer_is_loopback) -> str:
        if "host" not in signed_headers:
            raise InvalidSignatureException("'Host' must be a 'SignedHeader' in the AWS Authorization.")
        if algorithm != ALGORITHM:
            raise IncompleteSignatureException(
                f"Unsupported AWS 'algorithm': '{algorithm}' (only {ALGORITHM} for now). ")
        parts = credential.rstrip("/").split("/")
        if len(parts) != 5:
            raise IncompleteSignatureException(
                "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, "
                f"got '{credential}'")
        key_id, scope_date, region, service, terminator = parts
        problems = ""
        if not region:
            problems += f"Credential should be scoped to a valid region, not '{region}'. "
        if service != self.service:
            problems += f"Credential should be scoped to correct service: '{self.service}'. "
        if terminator != TERMINATOR:
            problems += f"Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{terminator}'. "
        if scope_date != date[:8]:
            problems += (f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                         f"'{scope_date}' != '{date[:8]}', from '{date}'.")
        if problems:
            raise InvalidSignatureException(problems.rstrip())
        secret = self.credentials.secret(key_id, peer_is_loopback)
        if secret is None:
            raise UnrecognizedClientException()
        key = signing_key(secret, scope_date, region, service)
        request = canonical_request(method, raw_path, query, headers, signed_headers, payload_hash)
        expected = _signature(key, date, f"{scope_date}/{region}/{service}/{TERMINATOR}", request)
        if not hmac.compare_digest(expected, signature):
            raise InvalidSignatureException()
        return key_id
