"""Kubernetes string formats the schema uses, as pydantic types whose patterns also land in the CRD.

Each pattern is RE2-compatible (the API server's regex engine) and has a plain-words description that
`legistra validate` and the operator print instead of the regex.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from legistra import s3

# resource.Quantity without a sign: 8, 500m, 1.5, 64Gi, 1e3
QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)))?$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?" + _LABEL_NAME + "$")
_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
_DOMAIN = r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*(:[0-9]+)?"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
DURATION = r"^(0|[1-9][0-9]{0,5}[smh])$"
IMAGE = rf"^({_DOMAIN}/)?{_COMPONENT}(/{_COMPONENT})*(:[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(@sha256:[a-f0-9]{{64}})?$"

DESCRIBED: dict[str, str] = {
    DNS1123_LABEL: "a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or "
                   "digit",
    QUANTITY: "a Kubernetes quantity such as 8, 500m, 1.5 or 64Gi",
    DNS1123_SUBDOMAIN: "a DNS-1123 name: lower-case letters, digits, '-' and '.', starting and ending with a "
                       "letter or digit",
    LABEL_VALUE: "a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or "
                 "digit",
    LABEL_KEY: "a label key: an optional DNS-1123 prefix and '/', then at most 63 letters, digits, '-', '_' or '.'",
    SECRET_KEY: "a Secret key: letters, digits, '-', '_' or '.'",
    IMAGE: "an image reference such as registry.example.com/team/trainer:1.2 (lower-case repository)",
    DURATION: "a duration such as 90s, 30m or 2h (0 turns it off)",
}


def _label_key(key: str) -> str:
    if not re.match(LABEL_KEY, key) or len(key.rpartition("/")[0]) > 253:
        raise ValueError(f"{key!r} is not {DESCRIBED[LABEL_KEY]}")
    return key


def _s3_location(value: str) -> str:
    if s3.is_s3(value):
        # Only the bucket's presence: S3-compatible stores (and old us-east-1 buckets) accept more names than
        # today's AWS rules, and the store itself says so precisely.
        s3.parse_s3_uri(value)  # raises "no bucket after s3://"
    return value


def credentials_in(uri: str) -> bool:
    """Whether `uri` carries a user or password (scheme://user:password@host/...)."""
    if "://" not in uri:
        return False
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    return parts.username is not None or parts.password is not None


def no_credentials(value: str) -> str:
    if credentials_in(value):
        raise ValueError("must not carry a user or password (they would be copied into run.json, status, logs and "
                         "MLflow); keep them in a Secret: spec.tracking.mlflow.credentialsSecret for MLflow, the "
                         "operator's S3 Secret for s3://, spec.model.tokenSecret for the hub")
    return value


def redact(uri: str) -> str:
    """`uri` with any user and password replaced by '***', for anything a person or a log may read."""
    if not credentials_in(uri):
        return uri
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"***@{host}").geturl()


def scalars(value: Any, max_depth: int, depth: int = 0) -> Iterator[Any]:
    """Every scalar inside a JSON value; ValueError as soon as it nests deeper than `max_depth`."""
    if depth > max_depth:
        raise ValueError(f"nested more than {max_depth} levels deep")
    if not isinstance(value, (dict, list)):
        yield value
        return
    for child in value.values() if isinstance(value, dict) else value:
        yield from scalars(child, max_depth, depth + 1)


def bounded_document(value: Any, max_bytes: int, max_depth: int) -> Any:
    """A free-form JSON value (a raw DeepSpeed config) that is small, shallow and holds only finite numbers."""
    if value is None:
        return None
    for v in scalars(value, max_depth):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{v} is not a finite number")
    size = len(json.dumps(value))
    if size > max_bytes:
        raise ValueError(f"is {size:,} bytes as JSON; at most {max_bytes:,} are allowed")
    return value


Quantity = Annotated[str, Field(pattern=QUANTITY, max_length=64)]
DnsLabel = Annotated[str, Field(pattern=DNS1123_LABEL, min_length=1, max_length=63)]
DnsName = Annotated[str, Field(pattern=DNS1123_SUBDOMAIN, min_length=1, max_length=253)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)]
LabelKey = Annotated[str, Field(min_length=1, max_length=317), AfterValidator(_label_key)]
Image = Annotated[str, Field(pattern=IMAGE, max_length=512)]
Duration = Annotated[str, Field(pattern=DURATION, max_length=8)]


def duration_seconds(text: str) -> int:
    """Seconds in a `Duration` (30m -> 1800; 0 -> 0)."""
    if text == "0":
        return 0
    return int(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]
# A data, model or registry location: a path, a hub id, or s3://bucket/... with a real bucket.
SecretKey = Annotated[str, Field(pattern=SECRET_KEY, max_length=253)]
Location = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_s3_location),
                     AfterValidator(no_credentials)]
# A server address (the MLflow tracking URI): never with credentials in it.
Uri = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(no_credentials)]
