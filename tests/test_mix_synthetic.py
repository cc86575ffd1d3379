"""The mix against llama-quantize --dry-run on small synthetic models and many options.

tests/data/plans/synthetic.json.gz (make_synthetic.py): a llama with an untied output and odd
tensors (1-row, non-"weight", rows of 96 and 40, per_layer_token_embd, position_embd), an
8-expert qwen3moe with 3-D expert tensors, falcon with fused attn_qkv, an 80-layer GQA llama
(llama.cpp's 70B class); every ftype with and without an imatrix, and --pure,
--output-tensor-type, --token-embedding-type, --leave-output-tensor, --tensor-type,
--tensor-type-file and --prune-layers.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from qtool.mix import (
    MixError,
    MixOptions,
    ModelInfo,
    TensorSpec,
    parse_ggml_type,
    parse_prune_layers,
    parse_tensor_type,
    parse_tensor_type_file,
    plan,
)

DATA = json.loads(gzip.open(Path(__file__).parent / "data" / "plans" / "synthetic.json.gz", "rt").read())


def options_from_args(args: list[str], files: Path) -> MixOptions:
    """llama-quantize's option words -> MixOptions (the subset make_synthetic.py uses)."""
    o = MixOptions(dry_run=True)
    it = iter(args)
    for a in it:
        if a == "--imatrix":
            next(it)
            o.has_imatrix = True
        elif a == "--pure":
            o.pure = True
        elif a == "--leave-output-tensor":
            o.leave_output_tensor = True
        elif a == "--output-tensor-type":
            o.output_tensor_type = parse_ggml_type(next(it))
        elif a == "--token-embedding-type":
            o.token_embedding_type = parse_ggml_type(next(it))
        elif a == "--tensor-type":
            o.tensor_types.append(parse_tensor_type(next(it)))
        elif a == "--tensor-type-file":
            o.tensor_types.extend(parse_tensor_type_file(files / next(it)))
        elif a == "--prune-layers":
            o.prune_layers = parse_prune_layers(next(it))
        else:
            raise AssertionError(a)
    return o


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("synthetic")
    for name, text in DATA["files"].items():
        (d / name).write_text(text)
    return d


@pytest.mark.parametrize("i", range(len(DATA["runs"])),
                         ids=[f"{r['model']}-{r['ftype']}-{'_'.join(r['args'])}"[:90] for r in DATA["runs"]])
def test_synthetic_run(i: int, files: Path) -> None:
    run = DATA["runs"][i]
    model = DATA["models"][run["model"]]
    tensors = [TensorSpec(n, tuple(s), t) for n, s, t in model["tensors"]]
    info = ModelInfo.from_kv(model["kv"])
    opts = options_from_args(run["args"], files)
    if "error" in run:
        with pytest.raises(MixError) as e:
            plan(tensors, info, run["ftype"], opts)
        assert run["error"].split("(")[0].strip() in str(e.value)
        return
    p = plan(tensors, info, run["ftype"], opts)
    names = run.get("names") or [t[0] for t in model["tensors"]]
    assert [d.name for d in p] == names
    want = run["types"].split()
    bad = [(n, w, d.type) for n, w, d in zip(names, want, p, strict=True) if w != d.type]
    assert not bad, f"{len(bad)} differ, e.g. {bad[:5]}"
    assert p.n_fallback == run["n_fallback"]
    if not opts.has_imatrix:  # llama-quantize's "will require an imatrix" warning
        assert any(d.requires_imatrix and d.allows_quantization for d in p) == run["requires_imatrix"]
