"""Reference plans for option and architecture cases the two real models do not reach.

Run by hand (not by pytest) where mainline llama-quantize is built:
    python tests/data/plans/make_synthetic.py LLAMA_QUANTIZE_BINARY WORKDIR
Writes small all-zero F16 GGUF models to WORKDIR (llama with an untied output and odd tensors,
a 8-expert qwen3moe, falcon with fused attn_qkv, an 80-layer GQA llama that llama.cpp treats as
70B), runs llama-quantize --dry-run on each with many ftypes and options, and writes
synthetic.json.gz here: per model its tensors and KV keys, per run the arguments and the result
(types in processing order and the fallback count, or the error message).
"""

import gzip
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np

LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\S+), size =\s*[\d.]+ MiB"
                  r"(?: ->\s*[\d.]+ MiB \((\S+)\))?")


def write_model(path: Path, arch: str, kv: dict, tensors: list[tuple[str, tuple[int, ...]]]) -> list:
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in kv.items():
        if isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_uint32(k, v)
    w.add_file_type(1)
    out = []
    for name, ne in tensors:
        dt = np.float32 if len(ne) == 1 else np.float16
        w.add_tensor(name, np.zeros(tuple(reversed(ne)), dtype=dt))
        out.append([name, list(ne), "F32" if dt is np.float32 else "F16"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def llama_like(n_layer: int, n_embd: int, n_head: int, n_head_kv: int, n_ff: int, vocab: int,
               output: bool, extras: bool) -> list[tuple[str, tuple[int, ...]]]:
    hd = n_embd // n_head
    ts = [("token_embd.weight", (n_embd, vocab)), ("output_norm.weight", (n_embd,))]
    if output:
        ts.append(("output.weight", (n_embd, vocab)))
    if extras:
        ts += [("per_layer_token_embd.weight", (n_embd, vocab)), ("rope_freqs.weight", (hd // 2,)),
               ("position_embd.weight", (n_embd, 64))]
    for i in range(n_layer):
        p = f"blk.{i}."
        ts += [(p + "attn_norm.weight", (n_embd,)), (p + "attn_q.weight", (n_embd, n_embd)),
               (p + "attn_k.weight", (n_embd, hd * n_head_kv)), (p + "attn_v.weight", (n_embd, hd * n_head_kv)),
               (p + "attn_output.weight", (n_embd, n_embd)), (p + "ffn_norm.weight", (n_embd,)),
               (p + "ffn_gate.weight", (n_embd, n_ff)), (p + "ffn_up.weight", (n_embd, n_ff)),
               (p + "ffn_down.weight", (n_ff, n_embd))]
        if extras and i == 0:
            ts += [(p + "ffn_extra.scale", (n_embd, 4)), (p + "attn_vec.weight", (n_embd, 1)),
                   (p + "ffn_down_odd.weight", (96, 64)), (p + "ffn_up_tiny.weight", (40, 16))]
    return ts


def models(work: Path) -> dict:
    m = {}
    kv = {"llama.context_length": 4096, "llama.embedding_length": 256, "llama.block_count": 16,
          "llama.feed_forward_length": 512, "llama.attention.head_count": 8,
          "llama.attention.head_count_kv": 2, "llama.attention.layer_norm_rms_epsilon": 1e-5,
          "llama.vocab_size": 512, "llama.rope.dimension_count": 32}
    m["llama-untied"] = ("llama", kv, llama_like(16, 256, 8, 2, 512, 512, True, True))
    kv70 = dict(kv, **{"llama.block_count": 80, "llama.feed_forward_length": 256, "llama.vocab_size": 256})
    m["llama-70b"] = ("llama", kv70, llama_like(80, 256, 8, 2, 256, 256, False, False))
    kvq = {"qwen3moe.context_length": 4096, "qwen3moe.embedding_length": 256, "qwen3moe.block_count": 8,
           "qwen3moe.feed_forward_length": 512, "qwen3moe.expert_feed_forward_length": 64,
           "qwen3moe.attention.head_count": 4, "qwen3moe.attention.head_count_kv": 4,
           "qwen3moe.attention.key_length": 64, "qwen3moe.attention.value_length": 64,
           "qwen3moe.attention.layer_norm_rms_epsilon": 1e-6, "qwen3moe.expert_count": 8,
           "qwen3moe.expert_used_count": 2, "qwen3moe.vocab_size": 512}
    ts = [("token_embd.weight", (256, 512)), ("output_norm.weight", (256,)), ("output.weight", (256, 512))]
    for i in range(8):
        p = f"blk.{i}."
        ts += [(p + "attn_norm.weight", (256,)), (p + "attn_q.weight", (256, 256)),
               (p + "attn_k.weight", (256, 256)), (p + "attn_v.weight", (256, 256)),
               (p + "attn_output.weight", (256, 256)), (p + "attn_k_norm.weight", (64,)),
               (p + "attn_q_norm.weight", (64,)), (p + "ffn_norm.weight", (256,)),
               (p + "ffn_gate_inp.weight", (256, 8)), (p + "ffn_gate_exps.weight", (256, 64, 8)),
               (p + "ffn_up_exps.weight", (256, 64, 8)), (p + "ffn_down_exps.weight", (64, 256, 8))]
    m["qwen3moe"] = ("qwen3moe", kvq, ts)
    kvf = {"falcon.context_length": 2048, "falcon.embedding_length": 256, "falcon.block_count": 8,
           "falcon.feed_forward_length": 1024, "falcon.attention.head_count": 4,
           "falcon.attention.head_count_kv": 1, "falcon.attention.layer_norm_epsilon": 1e-5,
           "falcon.vocab_size": 512}
    ts = [("token_embd.weight", (256, 512)), ("output_norm.weight", (256,)), ("output_norm.bias", (256,)),
          ("output.weight", (256, 512))]
    for i in range(8):
        p = f"blk.{i}."
        ts += [(p + "attn_norm.weight", (256,)), (p + "attn_norm.bias", (256,)),
               (p + "attn_qkv.weight", (256, 256 + 2 * 64)), (p + "attn_output.weight", (256, 256)),
               (p + "ffn_up.weight", (256, 1024)), (p + "ffn_down.weight", (1024, 256))]
    m["falcon"] = ("falcon", kvf, ts)
    return m


def write_imatrix(path: Path) -> None:
    """A legacy .dat imatrix with one entry: enough for has_imatrix in a dry run."""
    name = b"blk.0.attn_q.weight"
    with path.open("wb") as f:
        f.write(struct.pack("<i", 1))
        f.write(struct.pack("<i", len(name)) + name + struct.pack("<ii", 1, 256))
        f.write(np.ones(256, dtype=np.float32).tobytes())
        f.write(struct.pack("<i", 1) + struct.pack("<i", 4) + b"test")


ALL = ["Q1_0", "Q2_0", "Q4_0", "Q4_1", "MXFP4_MOE", "Q5_0", "Q5_1", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S",
       "IQ1_M", "TQ1_0", "TQ2_0", "Q2_K", "Q2_K_S", "IQ3_XXS", "IQ3_S", "IQ3_M", "Q3_K", "IQ3_XS", "Q3_K_S",
       "Q3_K_M", "Q3_K_L", "IQ4_NL", "IQ4_XS", "Q4_K", "Q4_K_S", "Q4_K_M", "Q5_K", "Q5_K_S", "Q5_K_M",
       "Q6_K", "Q8_0", "F16", "BF16", "F32", "COPY"]


def runs(work: Path) -> list[tuple[str, str, list[str]]]:
    im = ["--imatrix", str(work / "imatrix.dat")]
    tt = work / "tt.txt"
    tt.write_text("attn_q=q8_0\n blk\\.1[0-5]\\.ffn_up=iq4_xs  OUTPUT=q4_1\n")
    r = []
    for model in ("llama-untied", "qwen3moe", "falcon", "llama-70b"):
        for ft in ALL:
            r.append((model, ft, []))
            if model != "llama-70b":
                r.append((model, ft, im))
    for model in ("llama-untied", "qwen3moe", "falcon"):
        for ft in ("Q4_K_M", "Q3_K_M", "IQ2_XS", "Q8_0", "F16", "IQ4_NL"):
            r.append((model, ft, ["--pure"]))
            r.append((model, ft, ["--output-tensor-type", "q8_0", "--token-embedding-type", "Q4_0"]))
            r.append((model, ft, ["--output-tensor-type", "iq4_xs"]))
            r.append((model, ft, ["--leave-output-tensor"]))
            r.append((model, ft, ["--tensor-type", "attn_v=q8_0", "--tensor-type", r"blk\.[0-3]\.ffn_down=q2_k"]))
            r.append((model, ft, ["--tensor-type-file", str(tt), "--tensor-type", "ffn=q5_1"]))
            r.append((model, ft, ["--prune-layers", "1,5,3"]))
            r.append((model, ft, ["--pure", "--tensor-type", "ffn_down=q6_k", "--output-tensor-type", "q4_k"]))
    for ft in ("Q4_K_M", "Q3_K_S", "Q6_K", "F16"):
        r.append(("llama-untied", ft, ["--token-embedding-type", "q4_0", "--tensor-type", "per_layer=q8_0"]))
        r.append(("llama-untied", ft, ["--token-embedding-type", "q4_0"]))
        r.append(("llama-untied", ft, ["--prune-layers", "0,15", "--tensor-type", r"blk\.0\.=q8_0"]))
    return r


def main(binary: str, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    write_imatrix(work / "imatrix.dat")
    data = {"models": {}, "runs": [], "files": {}}
    for name, (arch, kv, ts) in models(work).items():
        path = work / f"{name}.gguf"
        tensors = write_model(path, arch, {k: v for k, v in kv.items()}, ts)
        data["models"][name] = {"kv": dict(kv, **{"general.architecture": arch, "general.file_type": 1}),
                                "tensors": tensors}
    the_runs = runs(work)
    data["files"]["tt.txt"] = (work / "tt.txt").read_text()
    for model, ft, args in the_runs:
        cmd = [binary, "--dry-run", *args, str(work / f"{model}.gguf"), ft, "1"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        text = p.stdout + p.stderr
        shown = [a if not a.startswith(str(work)) else Path(a).name for a in args]
        entry = {"model": model, "ftype": ft, "args": shown}
        if "failed to quantize:" in text:
            err = next(ln for ln in text.splitlines() if "failed to quantize:" in ln)
            entry["error"] = err.split("failed to quantize:", 1)[1].strip()
        elif p.returncode:
            entry["error"] = text.strip().splitlines()[-1]
        else:
            rows = [m for m in map(LINE.match, text.splitlines()) if m]
            entry["names"] = [m.group(1) for m in rows]
            entry["types"] = " ".join((m.group(3) or m.group(2)).upper() for m in rows)
            nfb = re.search(r"WARNING: (\d+) of \d+ tensor\(s\) required fallback", text)
            entry["n_fallback"] = int(nfb.group(1)) if nfb else 0
            entry["requires_imatrix"] = "will require an imatrix" in text
        data["runs"].append(entry)
    for r in data["runs"]:  # names only where they differ from the model's file order
        if "names" in r and r["names"] == [t[0] for t in data["models"][r["model"]]["tensors"]]:
            del r["names"]
    out = Path(__file__).parent / "synthetic.json.gz"
    with gzip.open(out, "wt") as f:
        f.write(json.dumps(data, separators=(",", ":")) + "\n")
    print(len(data["runs"]), "runs;", sum("error" in r for r in data["runs"]), "errors")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
