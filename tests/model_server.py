"""A real Open Inference Protocol (v2) server for the tests: MLServer, serving one of our
ONNX models through the runtime in ``deploy/mlserver``.

MLServer pins its own versions of FastAPI, pydantic, protobuf and more, which clash with
ours, so it lives in its own virtualenv (``.venv-mlserver`` at the repository's root),
built on first use from PyPI and kept; a file lock lets parallel test processes share
one build. Nothing of it is imported here: the server is a child process.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from broker_testing import free_port, stop

from inferstream.application import find_model
from inferstream.classify import read_model_info

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-mlserver"
RUNTIME = ROOT / "deploy" / "mlserver"
#: What the server's virtualenv holds; a change here rebuilds it.
REQUIREMENTS = ("mlserver==1.7.1", "onnxruntime>=1.18")
_STAMP = VENV / ".installed"


def mlserver_venv() -> Path:
    """The ``mlserver`` command, its virtualenv built first if needed."""
    wanted = "\n".join(REQUIREMENTS)
    VENV.parent.mkdir(exist_ok=True)
    with open(ROOT / ".venv-mlserver.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _STAMP.exists() or _STAMP.read_text() != wanted:
            shutil.rmtree(VENV, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            pip = [str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
            subprocess.run([*pip, *REQUIREMENTS], check=True)
            _STAMP.write_text(wanted)
    return VENV / "bin" / "mlserver"


@dataclass
class ModelServer:
    """A running MLServer: its REST and gRPC URLs, and how to stop and start it again."""

    folder: Path
    http_port: int
    grpc_port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(RUNTIME)}
        env.pop("VIRTUAL_ENV", None)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(mlserver_venv()), "start", str(self.folder)],
                cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"MLServer exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.rest_url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200 and self._grpc_listening():
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"MLServer not ready in 60 s: {self.log.read_text()[-2000:]}")

    def _grpc_listening(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.grpc_port)) == 0

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def serve(self, model: str, version: str) -> None:
        """Serve ``model`` (a model an application ships) as ``version`` from the next
        start on."""
        write_model(self.folder, model, version)


def write_model(folder: Path, model: str, version: str) -> None:
    """A model folder MLServer loads: the ONNX graph and its ``model-settings.json``,
    tensors as our model's metadata declares them (batch dimension -1)."""
    shipped = find_model(model)
    assert shipped is not None, f"no application ships {model}"
    info, _ = read_model_info(model)
    target = folder / model
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copyfile(shipped / f"{model}.onnx", target / f"{model}.onnx")
    settings = {
        "name": model,
        "implementation": "inferstream_onnx.OnnxModel",
        "parameters": {"uri": f"./{model}.onnx", "version": version},
        "inputs": [{"name": info.input, "datatype": "FP32", "shape": [-1, *info.input_shape]}],
        "outputs": [{"name": info.output, "datatype": "FP32", "shape": [-1, len(info.labels)]}],
    }
    (target / "model-settings.json").write_text(json.dumps(settings))


@contextmanager
def model_server(folder: Path, model: str, version: str) -> Iterator[ModelServer]:
    """MLServer on free local ports serving ``model`` as ``version``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_model(folder, model, version)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
        "metrics_port": metrics_port, "parallel_workers": 0, "load_models_at_startup": True,
    }))  # fmt: skip
    server = ModelServer(folder, http_port, grpc_port, folder / "mlserver.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
