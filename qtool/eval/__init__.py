"""Run GGUF models over text as llama.cpp does: tokenizer, forward pass, perplexity, KL divergence
(the importance-matrix collection on top of it is qtool.imatrix.collect).

    model = GGUFModel("model.gguf")
    tok = Tokenizer.from_model(model)
    ids = tokenize_file(tok, "text.txt")                 # llama.cpp's -f handling
    r = perplexity(Forward(model), ids, n_ctx=512, bos=bos_id(tok))
"""

from __future__ import annotations

import numpy as np

from .kld import KldSums, kl_divergence, summary
from .model import ARCHES, Forward, HParams, ModelError
from .perplexity import EvalError, LogitsWriter, PerplexityResult, perplexity, read_logits_header
from .tokenizer import Tokenizer, TokenizerError, load_text


def tokenize_file(tok: Tokenizer, path: str, parse_special: bool = False, escape: bool = True) -> np.ndarray:
    """The tokens llama-imatrix / llama-perplexity evaluate for `-f path` (add_special=True)."""
    return np.asarray(tok.encode(load_text(path, escape), True, parse_special), dtype=np.int32)


def bos_id(tok: Tokenizer) -> int | None:
    """The token each chunk starts with (llama_vocab_get_add_bos), or None."""
    v = tok.vocab
    return v.bos if v.add_bos else None


__all__ = ["ARCHES", "EvalError", "Forward", "HParams", "KldSums", "LogitsWriter", "ModelError", "PerplexityResult",
           "Tokenizer", "TokenizerError", "bos_id", "kl_divergence", "load_text", "perplexity",
           "read_logits_header", "summary", "tokenize_file"]
