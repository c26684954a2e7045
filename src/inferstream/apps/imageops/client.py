"""A small HTTP client of the imageops routes (standard library only), for the example
and the benchmark: submit a job, read its status, download an output."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from inferstream.errors import InferstreamError


class ApiAnswer(InferstreamError):
    """The API answered something other than success."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"the API answered {status}: {body[:500]}")
        self.status = status


def multipart(fields: dict[str, str], files: Sequence[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body and its content type: each file a ``files`` part."""
    boundary = f"imageops-{secrets.token_hex(12)}"
    parts: list[bytes] = []
    for name, value in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(head.encode() + value.encode() + b"\r\n")
    for filename, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class ImageopsClient:
    """Calls one API at ``base_url`` with an API key."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def _call(self, path: str, data: bytes | None = None, content_type: str = "") -> bytes:
        headers = {"X-API-Key": self.api_key}
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                body: bytes = answer.read()
                return body
        except urllib.error.HTTPError as exc:
            raise ApiAnswer(exc.code, exc.read().decode(errors="replace")) from None

    def submit(self, actions: dict[str, Any], files: Sequence[tuple[str, bytes]]) -> Any:
        body, content_type = multipart({"actions": json.dumps(actions)}, files)
        return json.loads(self._call("/v1/apps/imageops/jobs", body, content_type))

    def status(self, job: str) -> Any:
        return json.loads(self._call(f"/v1/apps/imageops/jobs/{job}"))

    def download(self, url: str) -> bytes:
        return self._call(url)

    def ready(self) -> bool:
        try:
            self._call("/readyz")
        except (ApiAnswer, OSError):
            return False
        return True
