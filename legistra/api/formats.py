"""Kubernetes string formats the schema uses, as pydantic types whose patterns also land in the CRD.

Each pattern is RE2-compatible (the API server's regex engine) and has a plain-words description that
`legistra validate` and the operator print instead of the regex.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from legistra import s3

# resource.Quantity without a sign: 8, 500m, 1.5, 64Gi, 1e3
QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)))?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?" + _LABEL_NAME + "$")
_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
_DOMAIN = r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*(:[0-9]+)?"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
IMAGE = rf"^({_DOMAIN}/)?{_COMPONENT}(/{_COMPONENT})*(:[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(@sha256:[a-f0-9]{{64}})?$"

DESCRIBED: dict[str, str] = {
    QUANTITY: "a Kubernetes quantity such as 8, 500m, 1.5 or 64Gi",
    DNS1123_SUBDOMAIN: "a DNS-1123 name: lower-case letters, digits, '-' and '.', starting and ending with a "
                       "letter or digit",
    LABEL_VALUE: "a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or "
                 "digit",
    LABEL_KEY: "a label key: an optional DNS-1123 prefix and '/', then at most 63 letters, digits, '-', '_' or '.'",
    SECRET_KEY: "a Secret key: letters, digits, '-', '_' or '.'",
    IMAGE: "an image reference such as registry.example.com/team/trainer:1.2 (lower-case repository)",
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


Quantity = Annotated[str, Field(pattern=QUANTITY, max_length=64)]
DnsName = Annotated[str, Field(pattern=DNS1123_SUBDOMAIN, min_length=1, max_length=253)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)]
LabelKey = Annotated[str, AfterValidator(_label_key)]
Image = Annotated[str, Field(pattern=IMAGE, max_length=512)]
# A data, model or registry location: a path, a hub id, or s3://bucket/... with a real bucket.
SecretKey = Annotated[str, Field(pattern=SECRET_KEY, max_length=253)]
Location = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_s3_location)]
