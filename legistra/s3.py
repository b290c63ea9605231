"""S3 in one place: the `s3://bucket/key` parser and the boto3 client factory every module uses.

Endpoint, region and credentials come from the standard AWS variables that boto3 reads by itself
(`AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`, ...); nothing here hard-codes any of them.
"""

from __future__ import annotations

from typing import Any

SCHEME = "s3://"


def is_s3(uri: str) -> bool:
    return uri.startswith(SCHEME)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key"); the key may be empty (a bucket or prefix root)."""
    if not is_s3(uri):
        raise ValueError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[len(SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket after s3://")
    return bucket, key


def client() -> Any:
    """A new S3 client. boto3 is imported here so that code reading local files needs no AWS set-up; callers
    that make many requests keep the client (building one costs far more than a request)."""
    import boto3

    return boto3.client("s3")
