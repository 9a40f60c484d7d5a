"""An onnxruntime model class for MLServer 1.7 (which ships none), for bench/bench_serving.py.

Runs inside MLServer's own venv (`mlserver`, `onnxruntime`, `numpy`), never imported by
Satchel. It loads the model as the agent does: CPU execution provider, the runtime's default
intra-op threads unless the model settings' `parameters.extra.intra_op_num_threads` says.

    model-settings.json: {"name": "bench", "implementation": "mlserver_onnx.OnnxModel",
                          "parameters": {"uri": "./model.onnx"}}
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        extra = (self._settings.parameters.extra or {}) if self._settings.parameters else {}
        if extra.get("intra_op_num_threads"):
            options.intra_op_num_threads = int(extra["intra_op_num_threads"])
        self._session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self._session.run(self._output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, value)
                for name, value in zip(self._output_names, results, strict=True)
            ],
        )
