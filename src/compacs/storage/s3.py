"""S3 object store (AWS S3, MinIO, Ceph RGW, SeaweedFS): several nodes share one bucket.

``put`` returns only once the service acknowledged the whole object, checked by the
Content-MD5 it verifies on receipt; only then may the index reference the key. Transient
errors (throttling, 5xx, dropped connections) are retried with exponential backoff by
botocore's "standard" retry mode; a write that still fails raises OSError, which the
C-STORE path answers with 0xA700 and no index row.

URL: ``s3://bucket[/prefix]?endpoint=http://host:port&region=us-east-1``; credentials
come from the usual places (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile,
an instance role).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

from compacs.storage.base import OWNER_KEY, StorageFull, parts_of
from compacs.storage.keys import validate_key

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # pragma: no cover - an optional extra
    boto3 = None

_QUOTA_CODES = {"QuotaExceeded", "XMinioStorageFull", "InsufficientStorage", "EntityTooLarge"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Store:
    def __init__(self, bucket: str, prefix: str, endpoint: str | None, region: str | None):
        if boto3 is None:
            raise ValueError("storage s3://: needs boto3: pip install 'compacs[scale]'")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" + (f"?endpoint={endpoint}" if endpoint else "")
        config = Config(
            retries={"max_attempts": 6, "mode": "standard"},  # exponential backoff, jitter
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=32,
            s3={"addressing_style": "path"},
        )
        self._s3 = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=config
        )

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        parts = urlsplit(url)
        if not parts.netloc:
            raise ValueError(f"storage URL {url!r}: expected s3://bucket[/prefix]")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise ValueError(f"storage URL {url!r}: unknown parameter {sorted(unknown)[0]!r}")
        return cls(parts.netloc, parts.path, query.get("endpoint"), query.get("region"))

    def _key(self, key: str) -> str:
        key = validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- BlobStore -----------------------------------------------------------------------
    def put(self, key: str, data: bytes | Sequence[bytes], *, settled: bool = True) -> None:
        if not isinstance(data, bytes):  # one request body: its parts joined
            data = b"".join(parts_of(data))
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentMD5=md5)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _QUOTA_CODES:
                raise StorageFull(28, f"object store full for {key}: {code}") from exc
            raise OSError(f"S3 put of {key} failed: {code or exc}") from exc
        except BotoCoreError as exc:
            raise OSError(f"S3 put of {key} failed: {exc}") from exc

    def _get(self, key: str, **kwargs: Any) -> Any:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(key), **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "") in _MISSING_CODES:
                raise FileNotFoundError(key) from exc
            raise OSError(f"S3 get of {key} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise OSError(f"S3 get of {key} failed: {exc}") from exc

    def settle(self, key: str) -> None:
        pass  # written where it stays

    def forget(self, key: str) -> None:
        pass  # the key may be the kept copy itself

    def get(self, key: str) -> bytes:
        data: bytes = self._get(key)["Body"].read()  # boto3 ships no annotations
        return data

    def open(self, key: str) -> BinaryIO:
        return BytesIO(self.get(key))

    def _head(self, key: str) -> dict[str, Any]:
        try:
            head: dict[str, Any] = self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return head
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "") in _MISSING_CODES:
                raise FileNotFoundError(key) from exc
            raise OSError(f"S3 head of {key} failed: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(key))  # absent: no error
        except (ClientError, BotoCoreError) as exc:
            raise OSError(f"S3 delete of {key} failed: {exc}") from exc

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def local_path(self, key: str) -> Path | None:
        return None  # retrieve reads the bytes instead of streaming a file

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def modified(self, key: str) -> float:
        return float(self._head(key)["LastModified"].timestamp())  # a datetime (boto3: Any)

    def keys(self) -> Iterator[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
            for item in page.get("Contents", []):
                key = item["Key"][len(start) :]
                if key != OWNER_KEY:
                    yield key

    def recover(self) -> int:
        return 0  # a single PUT is atomic: an interrupted one leaves nothing behind

    def close(self) -> None:
        self._s3.close()
