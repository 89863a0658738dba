"""Shared fixtures. ``s3`` is a real S3-protocol server (moto) on loopback, not a mock of boto3."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pytest
from processes import free_port

# What the msenc CLI sets for its runs (msenc_cli.main), here before any test module loads torch: the suite
# runs several processes on few cores (DDP ranks, pipeline steps), where spinning OpenMP threads are slow.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@dataclass
class S3Env:
    endpoint: str
    bucket: str

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def client(self):
        from msenc_lib import storage

        return storage.s3_client()

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


@pytest.fixture
def s3(moto_server, monkeypatch) -> S3Env:
    """A fresh bucket on the loopback S3 server, with the env that msenc (and subprocesses) read."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    env = S3Env(endpoint=moto_server, bucket=f"msenc-{uuid.uuid4().hex[:10]}")
    env.client().create_bucket(Bucket=env.bucket)
    return env


# Docker-API socket + msenc image for tests marked `container` (see container_fixtures.py).
from container_fixtures import docker_api, msenc_image  # noqa: E402,F401
