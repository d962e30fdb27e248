"""Triton Python-backend model: one halfv-export ONNX graph (vision, embed, prefill or decode) on ONNX
Runtime's CPU provider. Copied by `halfv-export triton --backend python` as <role>/1/model.py next to
model.onnx; the input and output names come from this model's config.pbtxt (which mirrors the manifest).
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = int(_parameter(config, "intra_op_threads", "0") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:  # one at a time: each request has its own shapes (max_batch_size 0)
            try:
                feeds = {}
                for name in self.inputs:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is not None:
                        feeds[name] = tensor.as_numpy()
                values = self.session.run(self.outputs, feeds)
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in zip(self.outputs, values)]))
            except Exception as exc:  # ORT's shape/type errors go back to the caller, the model stays up
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses
