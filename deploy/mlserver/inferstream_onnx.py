"""An MLServer runtime serving an inferstream ONNX model on the Open Inference Protocol.

MLServer (https://mlserver.readthedocs.io) loads this runtime in its own environment:
it needs ``mlserver`` and ``onnxruntime`` there, not inferstream. A model folder holds
the ``.onnx`` file and a ``model-settings.json`` naming this runtime::

    {
      "name": "egg_sexing",
      "implementation": "inferstream_onnx.OnnxModel",
      "parameters": {"uri": "./egg_sexing.onnx", "version": "1.0.0"},
      "inputs": [{"name": "scan", "datatype": "FP32", "shape": [-1, 1, 64, 64]}],
      "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    }

``mlserver start FOLDER`` (with this file on ``PYTHONPATH``) then serves it over REST
and gRPC, and inferstream's ``remote_classify`` step calls it (docs/deploy.md, "Big
models on a model server").
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):  # type: ignore[misc]  # MLServer is not installed beside us
    """Runs the graph on whole batches: inputs in the order the graph declares them."""

    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._inputs = [node.name for node in self._session.get_inputs()]
        self._outputs = [node.name for node in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        given = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        missing = sorted(set(self._inputs) - set(given))
        if missing:
            raise ValueError(f"model {self.name} needs inputs {missing}")
        feed = {name: np.ascontiguousarray(given[name], dtype=np.float32) for name in self._inputs}
        wanted = [out.name for out in payload.outputs or []] or self._outputs
        results = self._session.run(wanted, feed)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name=name, payload=result)
                for name, result in zip(wanted, results, strict=True)
            ],
        )
