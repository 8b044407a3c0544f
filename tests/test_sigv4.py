"""SigV4: the shared canonicalization against AWS's published example and botocore's signer,
the verifier's decisions and messages with an injected clock, and each DynamoDB error over
a real server."""
import calendar
import hashlib
import http.client
import time

import boto3
import botocore.config
import orjson
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError

from dynstore import limits
from dynstore.api import sigv4
from dynstore.api.credentials import (
    DEVELOPMENT_ACCESS_KEY_ID,
    DEVELOPMENT_SECRET_ACCESS_KEY,
    Credentials,
    CredentialsError,
)
from dynstore.api.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)
from test_server import KEY_ID, SECRET, check_wire, error_of, signed_headers, start_server

NOW = calendar.timegm((2013, 5, 24, 0, 10, 0))  # 20130524T001000Z
HOST = "127.0.0.1:8000"
BODY = b'{"TableName":"Music"}'


def epoch(amz_date: str) -> int:
    return calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))


def headers_signed_at(when, *, secret=SECRET, key_id=KEY_ID, body=BODY, region="us-east-1", service="dynamodb"):
    headers = {"host": HOST, "content-type": "application/x-amz-json-1.0", "x-amz-target": "DynamoDB_20120810.GetItem"}
    signed = sigv4.sign("POST", "/", "", headers, body, key_id, secret, region, now=when, service=service)
    headers.update({k.lower(): v for k, v in signed.items()})
    return headers


def verify(headers, body=BODY, *, now=NOW, query="", loopback=False, credentials=Credentials({KEY_ID: SECRET})):
    return sigv4.Verifier(credentials).verify("POST", "/", query, headers, body, peer_is_loopback=loopback, now=now)


# --- canonicalization ----------------------------------------------------------------------


def test_aws_published_example():
    # The "get-vanilla" case of AWS's SigV4 test suite.
    signed = sigv4.sign("GET", "/", "", {"host": "example.amazonaws.com"}, b"", "AKIDEXAMPLE",
                        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "us-east-1", now=epoch("20150830T123600Z"),
                        service="service")
    assert signed["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")


@pytest.mark.parametrize("path, query", [
    ("/", ""),
    ("/a/../b//c/./d/", "z=1&a=b%20c&a=a"),
    ("/%E2%82%AC/x y", "k=%2F%2B"),
])
def test_signature_equals_botocores(path, query):
    url = f"http://{HOST}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method="POST", url=url, data=BODY, headers={
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.GetItem",
        "X-Extra": "  two   spaces  "})
    SigV4Auth(BotoCredentials(KEY_ID, SECRET), "dynamodb", "eu-west-1").add_auth(request)
    ours = sigv4.sign("POST", path, query, {"host": HOST, "content-type": "application/x-amz-json-1.0",
                                            "x-amz-target": "DynamoDB_20120810.GetItem", "x-extra": "  two   spaces  "},
                      BODY, KEY_ID, SECRET, "eu-west-1", now=epoch(request.headers["X-Amz-Date"]))
    assert ours["Authorization"] == request.headers["Authorization"]


def test_presigned_query_equals_botocores():
    # botocore presigns without a body: it moves or drops one before signing.
    request = AWSRequest(method="POST", url=f"http://{HOST}/", data=b"",
                         headers={"X-Amz-Target": "DynamoDB_20120810.GetItem"})
    SigV4QueryAuth(BotoCredentials(KEY_ID, SECRET), "dynamodb", "us-east-1", expires=300).add_auth(request)
    query = request.url.partition("?")[2]
    date = dict(p.split("=") for p in query.split("&"))["X-Amz-Date"]
    ours = sigv4.presign("POST", "/", {"host": HOST, "x-amz-target": "DynamoDB_20120810.GetItem"}, b"", KEY_ID,
                         SECRET, "us-east-1", now=epoch(date), expires_s=300)
    assert ours == query


# --- the verifier ---------------------------------------------------------------------------


def test_good_signature_names_the_key():
    assert verify(headers_signed_at(NOW - 60)) == KEY_ID
    assert verify(headers_signed_at(NOW + 60)) == KEY_ID


@pytest.mark.parametrize("separator", [",", ", ", " ", " , "])
def test_authorization_pairs_separated_by_commas_or_spaces(separator):
    headers = headers_signed_at(NOW)
    algorithm, _, pairs = headers["authorization"].partition(" ")
    headers["authorization"] = f"{algorithm} " + separator.join(p.strip() for p in pairs.split(","))
    assert verify(headers) == KEY_ID
    # Parsed whole, an expired one is refused for its date, as DynamoDB does.
    with pytest.raises(InvalidSignatureException, match="Signature expired"):
        verify(headers, now=NOW + 3600)


def test_wrong_secret_and_tampered_body():
    with pytest.raises(InvalidSignatureException) as e:
        verify(headers_signed_at(NOW, secret="not the secret"))
    assert e.value.message.startswith("The request signature we calculated does not match")
    assert "not the secret" not in e.value.message and SECRET not in e.value.message
    with pytest.raises(InvalidSignatureException):
        verify(headers_signed_at(NOW), body=b'{"TableName":"Other"}')
    headers = headers_signed_at(NOW)
    headers["x-amz-target"] = "DynamoDB_20120810.DeleteTable"
    with pytest.raises(InvalidSignatureException):
        verify(headers)


def test_unknown_key():
    with pytest.raises(UnrecognizedClientException) as e:
        verify(headers_signed_at(NOW, key_id="AKIDUNKNOWN"))
    assert e.value.message == "The security token included in the request is invalid."


def test_expired_and_future_signatures():
    with pytest.raises(InvalidSignatureException) as e:
        verify(headers_signed_at(epoch("20130524T000000Z")), now=epoch("20130524T002000Z"))
    assert e.value.message == ("Signature expired: 20130524T000000Z is now earlier than 20130524T000500Z "
                               "(20130524T002000Z - 15 min.)")
    with pytest.raises(InvalidSignatureException) as e:
        verify(headers_signed_at(epoch("20130524T003000Z")), now=epoch("20130524T001000Z"))
    assert e.value.message == ("Signature not yet current: 20130524T003000Z is still later than 20130524T002500Z "
                               "(20130524T001000Z + 15 min.)")
    # The window is inclusive at 15 minutes.
    assert verify(headers_signed_at(NOW - limits.SIGV4_CLOCK_SKEW_S)) == KEY_ID


def test_missing_authentication():
    headers = headers_signed_at(NOW)
    del headers["authorization"]
    with pytest.raises(MissingAuthenticationTokenException) as e:
        verify(headers)
    assert e.value.message == "Request is missing Authentication Token"
    headers["authorization"] = "AWS AKID:c2lnbmF0dXJl"  # signature version 2 is not accepted
    with pytest.raises(MissingAuthenticationTokenException):
        verify(headers)


def test_incomplete_signatures():
    headers = headers_signed_at(NOW)
    auth = "AWS4-HMAC-SHA256 Credential=a/b/c/d/e"
    headers["authorization"] = auth
    del headers["x-amz-date"]
    with pytest.raises(IncompleteSignatureException) as e:
        verify(headers)
    assert e.value.message == (
        "Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' "
        "parameter. Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
        f"Authorization={auth}")
    headers = headers_signed_at(NOW)
    headers["authorization"] = "AWS4-HMAC-SHA256 Credential, Signature=b, SignedHeaders=host"
    with pytest.raises(IncompleteSignatureException) as e:
        verify(headers)
    assert e.value.message.startswith("'Credential' not a valid key=value pair (missing equal-sign)")
    headers = headers_signed_at(NOW)
    headers["x-amz-date"] = "201"
    with pytest.raises(IncompleteSignatureException) as e:
        verify(headers)
    assert e.value.message == ("Date must be in ISO-8601 'basic format'. Got '201'. "
                               "See http://en.wikipedia.org/wiki/ISO_8601")
    headers = headers_signed_at(NOW)
    headers["authorization"] = headers["authorization"].replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA25")
    with pytest.raises(IncompleteSignatureException) as e:
        verify(headers)
    assert e.value.message == "Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA25' (only AWS4-HMAC-SHA256 for now). "
    headers = headers_signed_at(NOW)
    headers["authorization"] = headers["authorization"].replace("/us-east-1/", "/")
    with pytest.raises(IncompleteSignatureException) as e:
        verify(headers)
    assert e.value.message.startswith("Credential must have exactly 5 slash-delimited elements")


def test_credential_scope_checks():
    with pytest.raises(InvalidSignatureException) as e:
        verify(headers_signed_at(NOW, service="s3"))
    assert e.value.message == "Credential should be scoped to correct service: 'dynamodb'."
    headers = headers_signed_at(NOW)
    headers["authorization"] = headers["authorization"].replace("/20130524/", "/20130523/")
    with pytest.raises(InvalidSignatureException) as e:
        verify(headers)
    assert e.value.message == ("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
                               "HTTP: '20130523' != '20130524', from '20130524T001000Z'.")
    headers = headers_signed_at(NOW)
    headers["authorization"] = headers["authorization"].replace("SignedHeaders=content-type;host;",
                                                                "SignedHeaders=content-type;")
    with pytest.raises(InvalidSignatureException) as e:
        verify(headers)
    assert e.value.message == "'Host' must be a 'SignedHeader' in the AWS Authorization."
    # Any region is accepted: the client's own choice of region signs the request.
    assert verify(headers_signed_at(NOW, region="eu-central-1")) == KEY_ID


def test_date_header_instead_of_x_amz_date():
    headers = {"host": HOST, "date": "Fri, 24 May 2013 00:10:00 GMT"}
    request = sigv4.canonical_request("POST", "/", "", headers, ["date", "host"], hashlib.sha256(BODY).hexdigest())
    scope = f"20130524/us-east-1/dynamodb/{sigv4.TERMINATOR}"
    signature = sigv4._signature(sigv4.signing_key(SECRET, "20130524", "us-east-1", "dynamodb"),
                                 "20130524T001000Z", scope, request)
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={KEY_ID}/{scope}, SignedHeaders=date;host, "
                                f"Signature={signature}")
    assert verify(headers) == KEY_ID


def test_presigned_requests():
    headers = {"host": HOST, "x-amz-target": "DynamoDB_20120810.GetItem"}
    query = sigv4.presign("POST", "/", headers, BODY, KEY_ID, SECRET, "us-east-1", now=NOW, expires_s=300)
    assert verify(headers, query=query, now=NOW + 299) == KEY_ID
    with pytest.raises(InvalidSignatureException) as e:
        verify(headers, query=query, now=NOW + 301)
    assert e.value.message.startswith("Signature expired: 20130524T001500Z is now earlier than 20130524T001501Z")
    with pytest.raises(InvalidSignatureException):
        verify(dict(headers, **{"x-amz-target": "DynamoDB_20120810.DeleteTable"}), query=query)
    with pytest.raises(InvalidSignatureException):
        verify(headers, body=b'{"TableName":"Other"}', query=query)
    with pytest.raises(IncompleteSignatureException) as e:
        verify(headers, query=query.replace("X-Amz-Signature=", "X-Amz-Nothing="))
    assert e.value.message == ("AWS query-string parameters must include 'X-Amz-Signature'. "
                               "Re-examine the query-string parameters.")
    with pytest.raises(InvalidSignatureException) as e:
        verify(dict(headers, authorization="AWS4-HMAC-SHA256 Credential=x"), query=query)
    assert e.value.message == ("Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as "
                               "HTTP header.")


def test_development_credentials_only_on_loopback():
    dev = Credentials.development_only()
    headers = headers_signed_at(NOW, key_id=DEVELOPMENT_ACCESS_KEY_ID, secret=DEVELOPMENT_SECRET_ACCESS_KEY)
    assert verify(headers, credentials=dev, loopback=True) == DEVELOPMENT_ACCESS_KEY_ID
    with pytest.raises(UnrecognizedClientException):
        verify(headers, credentials=dev, loopback=False)
    with pytest.raises(UnrecognizedClientException):
        verify(headers, credentials=Credentials({KEY_ID: SECRET}), loopback=True)


def test_signing_key_cache_is_bounded():
    verifier = sigv4.Verifier(Credentials({KEY_ID: SECRET}))
    for i in range(limits.SIGV4_SIGNING_KEYS_CACHED_MAX + 10):
        headers = headers_signed_at(NOW, region=f"region-{i}")
        assert verifier.verify("POST", "/", "", headers, BODY, peer_is_loopback=False, now=NOW) == KEY_ID
        assert sigv4.signing_key.cache_info().currsize <= limits.SIGV4_SIGNING_KEYS_CACHED_MAX
    # The first region's key was evicted, and is derived again correctly when it returns.
    headers = headers_signed_at(NOW, region="region-0")
    assert verifier.verify("POST", "/", "", headers, BODY, peer_is_loopback=False, now=NOW) == KEY_ID


# --- credentials -----------------------------------------------------------------------------


def test_credentials_from_env_and_file(tmp_path):
    path = tmp_path / "credentials"
    path.write_text("[reader]\naws_access_key_id = AKIDREADER\naws_secret_access_key = s1\n\n"
                    "[writer]\naws_access_key_id=AKIDWRITER\naws_secret_access_key=s2\n")
    creds = Credentials.load(str(path), environ={"DYNSTORE_ACCESS_KEY_ID": "AKIDENV",
                                                 "DYNSTORE_SECRET_ACCESS_KEY": "s0"})
    assert [creds.secret(k, False) for k in ("AKIDENV", "AKIDREADER", "AKIDWRITER")] == ["s0", "s1", "s2"]
    assert creds.configured and not creds.development
    assert "s1" not in repr(creds) and "AKIDREADER" in repr(creds)
    assert Credentials.load(None, environ={}).development
    with pytest.raises(CredentialsError):
        Credentials.load(None, environ={"DYNSTORE_ACCESS_KEY_ID": "AKIDENV"})
    path.write_text("[broken]\naws_access_key_id = AKID\n")
    with pytest.raises(CredentialsError) as e:
        Credentials.from_file(str(path))
    assert "aws_secret_access_key" in str(e.value)


# --- over a real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    thread = start_server()
    yield thread
    thread.stop()


def client(endpoint, key_id, secret):
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key_id,
                        aws_secret_access_key=secret, config=botocore.config.Config(retries={"max_attempts": 1}))


@pytest.mark.parametrize("key_id, secret, code", [
    (KEY_ID, "wrong secret", "InvalidSignatureException"),
    ("AKIDUNKNOWN", SECRET, "UnrecognizedClientException"),
    (DEVELOPMENT_ACCESS_KEY_ID, DEVELOPMENT_SECRET_ACCESS_KEY, "UnrecognizedClientException"),
])
def test_boto3_rejected(server, key_id, secret, code):
    with pytest.raises(ClientError) as e:
        client(server.endpoint, key_id, secret).list_tables()
    assert e.value.response["Error"]["Code"] == code
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def raw(server, headers, body=b"{}", url="/"):
    conn = http.client.HTTPConnection("127.0.0.1", server.server.port, timeout=5)
    try:
        conn.request("POST", url, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        check_wire(resp.status, resp.headers, data)
        return resp.status, error_of(data) if resp.status != 200 else orjson.loads(data)
    finally:
        conn.close()


def test_errors_over_the_wire(server):
    port = server.server.port
    assert raw(server, signed_headers(port, "ListTables", b"{}")) == (200, {"TableNames": []})
    expired = signed_headers(port, "ListTables", b"{}", now=time.time() - 16 * 60)
    status, (code, message) = raw(server, expired)
    assert (status, code) == (400, "InvalidSignatureException") and message.startswith("Signature expired: ")
    missing = signed_headers(port, "ListTables", b"{}")
    del missing["Authorization"]
    assert raw(server, missing) == (400, ("MissingAuthenticationTokenException",
                                          "Request is missing Authentication Token"))
    incomplete = dict(missing, Authorization="AWS4-HMAC-SHA256 Credential=x")
    status, (code, _) = raw(server, incomplete)
    assert (status, code) == (400, "IncompleteSignatureException")


def test_presigned_over_the_wire(server):
    port = server.server.port
    headers = {"X-Amz-Target": "DynamoDB_20120810.ListTables", "Content-Type": "application/x-amz-json-1.0"}
    query = sigv4.presign("POST", "/", {"host": f"127.0.0.1:{port}", "x-amz-target": headers["X-Amz-Target"]},
                          b"{}", KEY_ID, SECRET, "us-east-1", now=time.time(), expires_s=60)
    assert raw(server, headers, url=f"/?{query}") == (200, {"TableNames": []})
    status, (code, _) = raw(server, headers, url=f"/?{query}".replace("X-Amz-Signature=", "X-Amz-Signature=0"))
    assert (status, code) == (400, "InvalidSignatureException")
    # botocore's presigned URL (signed without a body) passes the signature check; the empty
    # body then fails deserialization.
    request = AWSRequest(method="POST", url=f"http://127.0.0.1:{port}/", data=b"", headers=dict(headers))
    SigV4QueryAuth(BotoCredentials(KEY_ID, SECRET), "dynamodb", "us-east-1", expires=60).add_auth(request)
    url = request.url.partition(f"127.0.0.1:{port}")[2]
    assert raw(server, headers, body=b"", url=url) == (400, ("SerializationException", ""))
