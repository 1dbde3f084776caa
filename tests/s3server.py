"""A real S3-compatible HTTP server for tests: moto's standalone server in a subprocess.

Not an in-process mock: the store under test talks HTTP to 127.0.0.1 like it would to
MinIO or AWS, so request signing, paths, headers and presigned URLs are all exercised.

In a test module::

    from tests.s3server import S3Server, live_s3_fixture  # noqa: F401 - a fixture

    def test_something(live_s3: S3Server) -> None:
        ...  # live_s3.endpoint_url, .bucket, .access_key, .secret_key, .region

``live_s3`` is session-scoped: one server and one bucket for the whole run, so use keys
of your own (e.g. a fresh job id). For a private server, ``with s3_server() as s3: ...``.

A worker process (or anything calling ``worker.storage.open_store``) needs
``s3.worker_env()`` in its environment, that is::

    IMAGEGEN_STORAGE_BACKEND=s3
    IMAGEGEN_S3_BUCKET=<bucket>
    IMAGEGEN_S3_ENDPOINT_URL=http://127.0.0.1:<port>
    IMAGEGEN_S3_REGION=<region>
    AWS_ACCESS_KEY_ID=<access key>
    AWS_SECRET_ACCESS_KEY=<secret key>

What moto does and does not check (moto 5.2):

- By default it verifies no signature at all: any credentials are accepted, and so is a
  presigned URL with a wrong signature or past its expiry.
- ``s3_server(verify_signatures=True)`` turns moto's IAM authentication on after the setup:
  requests signed in headers (everything obstore and boto3 send) must then carry the IAM
  access key the server made and a correct signature, or get 403. The credentials yielded
  are then that key pair, not the fixed test ones. Presigned URLs do not work on such a
  server (moto answers 500: it looks for an Authorization header), so use the default
  server for those.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

ACCESS_KEY: Final = "testing-access"
SECRET_KEY: Final = "testing-secret-0123456789"
REGION: Final = "us-east-1"
BUCKET: Final = "imagegen-test"
START_TIMEOUT: Final = 30.0


@dataclass(frozen=True)
class S3Server:
    """Where the server listens, its bucket and credentials that it accepts."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str

    def worker_env(self) -> dict[str, str]:
        """The environment a worker needs to copy results into this server's bucket."""
        return {
            "IMAGEGEN_STORAGE_BACKEND": "s3",
            "IMAGEGEN_S3_BUCKET": self.bucket,
            "IMAGEGEN_S3_ENDPOINT_URL": self.endpoint_url,
            "IMAGEGEN_S3_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def client(self, service: str = "s3") -> Any:
        """A boto3 client of this server (for checks from the test side)."""
        import boto3  # type: ignore[import-untyped]  # no stubs installed

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


@contextmanager
def s3_server(
    bucket: str = BUCKET, *, region: str = REGION, verify_signatures: bool = False
) -> Iterator[S3Server]:
    """Start moto's server on a free loopback port with ``bucket`` in it; stop it after."""
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log = Path(tmp) / "moto.log"
        process, endpoint = _start(log)
        try:
            server = _prepare(
                S3Server(endpoint, bucket, ACCESS_KEY, SECRET_KEY, region), verify_signatures
            )
            yield server
        finally:
            _stop(process)


# Named apart from its function so that a test taking ``live_s3`` does not shadow the
# imported name (ruff's F811).
@pytest.fixture(scope="session", name="live_s3")
def live_s3_fixture() -> Iterator[S3Server]:
    """One moto S3 server with one bucket for the whole test session."""
    with s3_server() as server:
        yield server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    # The port is free when picked but another process may take it before moto binds;
    # then moto exits at once and another port is tried.
    env = {k: v for k, v in os.environ.items() if k != "INITIAL_NO_AUTH_ACTION_COUNT"}
    for _ in range(3):
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        if _wait_ready(process, endpoint):
            return process, endpoint
        _stop(process)
    raise RuntimeError(f"moto's server did not start:\n{log.read_text(errors='replace')[-2000:]}")


def _wait_ready(process: subprocess.Popen[bytes], endpoint: str) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(timeout=1.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                # moto's own API: unlike an S3 call it does not count as a request against
                # INITIAL_NO_AUTH_ACTION_COUNT.
                if http.get(f"{endpoint}/moto-api/config").status_code < 500:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    return False


def _prepare(server: S3Server, verify_signatures: bool) -> S3Server:
    s3 = server.client()
    if server.region == "us-east-1":
        s3.create_bucket(Bucket=server.bucket)
    else:
        s3.create_bucket(
            Bucket=server.bucket,
            CreateBucketConfiguration={"LocationConstraint": server.region},
        )
    if not verify_signatures:
        return server
    iam = server.client("iam")
    iam.create_user(UserName="imagegen-test")
    iam.put_user_policy(
        UserName="imagegen-test",
        PolicyName="s3-all",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="imagegen-test")["AccessKey"]
    # From now on every S3/IAM request must be signed with a key moto knows.
    response = httpx.post(f"{server.endpoint_url}/moto-api/reset-auth", content=b"0")
    response.raise_for_status()
    return S3Server(
        server.endpoint_url,
        server.bucket,
        key["AccessKeyId"],
        key["SecretAccessKey"],
        server.region,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
