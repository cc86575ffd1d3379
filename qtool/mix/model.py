"""What the type choice needs to know about a model: its tensors and a few hyperparameters.

`ModelInfo.from_kv` reads the same GGUF keys llama.cpp's loader does (`llm_load_hparams` /
`llama_model_base::load_hparams`) and derives the model-size class that the mixes test
(mainline `LLM_TYPE_70B`; ik_llama.cpp `MODEL_70B` and `MODEL_8B`) the way each arch's
`load_arch_hparams` does. Apply `--override-kv` to the KV dict before calling it: llama.cpp's
loader reads hyperparameters through the overrides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the input model.

    shape is ggml's ne order: shape[0] is the row length. type is a GGML type name ("F16").
    split / offset: the split file holding it and its offset there; only used to order tensors
    for --keep-split (llama.cpp sorts by split index, then offset). Pass tensors in file order.
    """

    name: str
    shape: tuple[int, ...]
    type: str
    split: int = 0
    offset: int = 0

    @property
    def n_dims(self) -> int:
        """ggml_n_dims: 1 + the index of the last dimension > 1 (trailing 1s do not count)."""
        ne = list(self.shape) + [1] * (4 - len(self.shape))
        for i in range(len(ne) - 1, 0, -1):
            if ne[i] > 1:
                return i + 1
        return 1

    def ne(self, i: int) -> int:
        return self.shape[i] if i < len(self.shape) else 1


def _first(v: Any) -> int:
    """A per-layer array's layer-0 entry (list, tuple or numpy array), or the scalar itself."""
    if hasattr(v, "__len__") and not isinstance(v, (str, bytes)):
        return int(v[0]) if len(v) else 0
    return int(v)


@dataclass
class ModelInfo:
    """Hyperparameters used by the type choice.

    n_layer: `<arch>.block_count` (hparams.n_layer_all in mainline, hparams.n_layer in ik), the
    count the ffn_down / ffn_gate / ffn_up rules divide by. n_expert: `<arch>.expert_count` (0
    when absent). n_head / n_head_kv: layer 0's head counts (n_gqa = n_head / n_head_kv).
    """

    arch: str
    n_layer: int
    n_expert: int = 0
    n_head: int = 0
    n_head_kv: int = 0
    n_layer_nextn: int = 0
    n_vocab: int = 0
    n_embd: int = 0
    kv: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_gqa(self) -> int:
        """llama_hparams::n_gqa(0): n_head / n_head_kv, 0 when n_head_kv is 0."""
        if self.n_head_kv == 0:
            return 0
        return self.n_head // self.n_head_kv

    @classmethod
    def from_kv(cls, kv: Mapping[str, Any]) -> ModelInfo:
        """Build from a GGUF KV mapping {key: python value} (arrays as lists)."""
        arch = str(kv.get("general.architecture", ""))

        def get(key: str, default: Any = 0) -> Any:
            return kv.get(f"{arch}.{key}", default)

        n_layer = int(get("block_count", 0))
        n_head_v = get("attention.head_count", 0)
        n_head = _first(n_head_v)
        n_head_kv_v = get("attention.head_count_kv", None)
        n_head_kv = n_head if n_head_kv_v is None else _first(n_head_kv_v)
        n_vocab = get("vocab_size", None)
        if n_vocab is None:
            toks = kv.get("tokenizer.ggml.tokens")
            n_vocab = len(toks) if isinstance(toks, Sequence) and not isinstance(toks, str) else 0
        n_expert = int(get("expert_count", 0))
        if arch in ("hunyuan-vl", "hunyuan-dense") and n_expert <= 1:
            n_expert = 0
        return cls(arch=arch, n_layer=n_layer, n_expert=n_expert, n_head=n_head,
                   n_head_kv=n_head_kv, n_layer_nextn=int(get("nextn_predict_layers", 0)),
                   n_vocab=int(n_vocab), n_embd=int(get("embedding_length", 0)), kv=dict(kv))

    # --- model size classes -------------------------------------------------------------

    def is_70b_mainline(self) -> bool:
        """Mainline `model.type == LLM_TYPE_70B` (src/models/{llama,deci,qwen2,olmo,jais2}.cpp)."""
        n = self.n_layer - self.n_layer_nextn  # hparams.n_layer()
        if self.arch in ("llama", "llama-embed"):
            return self.n_expert != 8 and n == 80 and self.n_head != self.n_head_kv
        if self.arch in ("deci", "qwen2", "olmo"):
            return n == 80
        if self.arch == "jais2":
            return n == 68
        return False

    def ik_model_type(self) -> str:
        """ik_llama.cpp's `model.type`, as far as its mixes look at it ("70B", "8B" or "")."""
        n, a = self.n_layer, self.arch
        if a == "llama":
            if self.n_expert == 8:
                return ""
            if n == 32:
                return "" if self.n_vocab == 49152 or self.n_vocab < 40000 else "8B"
            if n == 36:
                return "8B"
            if n == 80:
                return "" if self.n_head == self.n_head_kv else "70B"
            return ""
        if a in ("deci", "qwen2", "qwen2vl", "olmo"):
            return "70B" if n == 80 else ""
        if a in ("qwen3", "qwen3vl"):
            return "8B" if n == 36 and self.n_embd != 2560 else ""
        if a == "cohere2":
            return "8B" if n == 32 else ""
        if a == "mistral3":
            return "8B" if n == 34 else ""
        return ""


_BLK_PREFIX = re.compile(r"blk\.\s*([+-]?\d+)")


def sscanf_layer(name: str) -> int | None:
    """`sscanf(name, "blk.%d.", &il)`: the layer of a name starting with "blk.N", else None."""
    m = _BLK_PREFIX.match(name)
    return int(m.group(1)) if m else None


def specs_from_gguf(model: Any) -> tuple[list[TensorSpec], ModelInfo]:
    """TensorSpecs and ModelInfo of an opened qtool.gguf_io.GGUFModel (duck-typed: `.kvs` with
    `.key` / `.value`, `.tensors` with `.name`, `.shape`, `.qtype.name`, `.part`, `.offset`)."""
    kv: dict[str, Any] = {}
    for e in model.kvs:
        kv.setdefault(e.key, e.value)
    tensors = [TensorSpec(t.name, tuple(int(x) for x in t.shape), t.qtype.name, int(t.part), int(t.offset))
               for t in model.tensors]
    return tensors, ModelInfo.from_kv(kv)
