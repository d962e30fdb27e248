"""Triton Python-backend model `halfv_vlm`: image + prompt in, text out, with HalfV inside the prefill.

Copied by `halfv-export triton` as halfv_vlm/1/model.py, next to a copy of halfv-export's torch-free
parts (halfv_export/: runtime/, manifest, profile, errors, fileio) and graphs/ (manifest.json, tokenizer;
the ONNX files too in local mode). Needs numpy, onnxruntime, pillow and tokenizers in the stub's Python.

    IMAGE uint8 [H, W, 3], PROMPT string [1], MAX_NEW_TOKENS int32 [1] (optional)
      -> preprocess -> vision -> prompt ids (chat template) -> embed -> prefill (HalfV) -> decode loop
      -> TEXT string [1], TOKENS int64 [n] (generated ids), KEPT int64 [3] (visual, after IVR, after SSR)

Two modes (config parameter `mode`):
  local  VlmPipeline in this process over graphs/ (python backend: no tensor copies between models)
  bls    the same pipeline, but every graph runs in the repository's vision/embed/prefill/decode models
         through BLS requests (onnxruntime_onnx or tensorrt_plan models; python ones for tests)
"""

import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # the copied halfv_export wins over any installed one

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from halfv_export.core.errors import UserError  # noqa: E402
from halfv_export.core.manifest import Manifest  # noqa: E402
from halfv_export.core.profile import Profile  # noqa: E402
from halfv_export.core.manifest import DECODER_ROLES  # noqa: E402
from halfv_export.runtime.pipeline import OrtPipeline  # noqa: E402
from halfv_export.runtime.text import load_tokenizer  # noqa: E402
from halfv_export.runtime.vlm import VlmPipeline, as_image_array  # noqa: E402

ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)",
             "int32": "tensor(int32)"}


class _Io:
    """The two attributes OrtPipeline reads from onnxruntime's NodeArg."""

    def __init__(self, entry: dict):
        self.name = entry["name"]
        self.type = ORT_TYPES.get(entry["dtype"], entry["dtype"])


class BlsSession:
    """onnxruntime.InferenceSession's get_inputs/get_outputs/run, answered by another model of this server."""

    def __init__(self, model: str, entry: dict):
        self.model = model
        self.inputs = [_Io(i) for i in entry["inputs"]]
        self.outputs = [_Io(o) for o in entry["outputs"]]

    def get_inputs(self):
        return self.inputs

    def get_outputs(self):
        return self.outputs

    def run(self, names, feeds: dict) -> list:
        names = list(names or [o.name for o in self.outputs])
        extra = {}
        if hasattr(pb_utils, "PreferredMemory"):  # TensorRT models answer on the GPU; as_numpy needs host memory
            extra["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        request = pb_utils.InferenceRequest(
            model_name=self.model, requested_output_names=names,
            inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in feeds.items()], **extra)
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"model {self.model}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in names]


class BlsPipeline(OrtPipeline):
    """OrtPipeline (host positions, ragged-cache generation loop) over BLS sessions instead of ORT ones."""

    def __init__(self, manifest: Manifest, models: dict):
        self.manifest = manifest
        self.config = manifest.get("config", {})
        profile = manifest.get("profile")
        self.profile = Profile.from_dict(profile) if profile else None
        self.num_layers = int(self.config["num_layers"])
        self.position_rows = int(self.config["position_rows"])
        self.dtype = np.float16 if manifest.get("dtype") == "fp16" else np.float32
        self.one_shot = False
        self.sessions = {role: BlsSession(models[role], manifest.graph(role)) for role in DECODER_ROLES}
        for role, session in self.sessions.items():
            self._check_io(role, session)


class BlsVlm(VlmPipeline):
    def __init__(self, graphs_dir: str, models: dict):
        self.manifest = Manifest.load(graphs_dir, verify=False)  # the ONNX files live in the role models
        self.one_shot = False
        self._decoder = BlsPipeline(self.manifest, models)
        self.preprocess = self.manifest.graph("vision")["preprocess"]
        self._vision = BlsSession(models["vision"], self.manifest.graph("vision"))
        self.tokenizer = load_tokenizer(self.manifest.folder)
        self.config = self.manifest["config"]


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        graphs = os.path.join(HERE, "graphs")
        self.mode = _parameter(config, "mode", "local")
        self.max_pixels = int(_parameter(config, "max_image_pixels", str(4096 * 4096)))
        self.default_new_tokens = int(_parameter(config, "default_max_new_tokens", "32"))
        self.max_new_tokens = int(_parameter(config, "max_new_tokens_limit", "1024"))
        if self.mode == "bls":
            models = json.loads(_parameter(config, "models", json.dumps({r: r for r in ("vision",) + DECODER_ROLES})))
            self.pipeline = BlsVlm(graphs, models)
        else:
            threads = int(_parameter(config, "intra_op_threads", "0") or 0)
            self.pipeline = VlmPipeline(graphs, threads=threads or None)

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        try:
            image, prompt, max_new_tokens = self._read(request)
            answer = self.pipeline.answer(as_image_array(image), prompt, max_new_tokens)
        except UserError as exc:  # the client's fault: say what, keep serving
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        except Exception as exc:  # a bug or a failing model: log the traceback, answer with one line
            pb_utils.Logger.log_error(traceback.format_exc())
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"internal error: {type(exc).__name__}: {exc}"))
        kept = answer.stats["kept"]
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("TEXT", np.array([answer.text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("TOKENS", np.asarray(answer.tokens, dtype=np.int64)),
            pb_utils.Tensor("KEPT", np.array([kept["visual"], kept["ivr"], kept["ssr"]], dtype=np.int64)),
        ])

    def _read(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        if tensor is None:
            raise UserError("IMAGE is required: uint8 [height, width, 3]")
        image = tensor.as_numpy()
        if image.ndim == 3 and image.shape[0] * image.shape[1] > self.max_pixels:
            raise UserError(f"IMAGE is {image.shape[1]}x{image.shape[0]} = {image.shape[0] * image.shape[1]} "
                            f"pixels, above this server's limit of {self.max_pixels}")
        tensor = pb_utils.get_input_tensor_by_name(request, "PROMPT")
        if tensor is None:
            raise UserError("PROMPT is required: one UTF-8 string")
        values = tensor.as_numpy().reshape(-1)
        if values.size != 1:
            raise UserError(f"PROMPT must hold one string, got {values.size}")
        prompt = values[0]
        try:
            prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
        except UnicodeDecodeError:
            raise UserError("PROMPT is not valid UTF-8") from None
        max_new_tokens = self.default_new_tokens
        tensor = pb_utils.get_input_tensor_by_name(request, "MAX_NEW_TOKENS")
        if tensor is not None:
            values = tensor.as_numpy().reshape(-1)
            if values.size != 1:
                raise UserError(f"MAX_NEW_TOKENS must hold one value, got {values.size}")
            max_new_tokens = int(values[0])
            if not 1 <= max_new_tokens <= self.max_new_tokens:
                raise UserError(f"MAX_NEW_TOKENS must be in [1, {self.max_new_tokens}], got {max_new_tokens}")
        return image, prompt, max_new_tokens
