"""Rebuild the `qtool quantize` fixtures of this folder and the llama-quantize reference manifest.

    python tests/data/quantize/make_refs.py /path/to/llama.cpp/build/bin/llama-quantize
    python tests/data/quantize/make_refs.py --fixtures-only     # the inputs only, no manifest

Fixtures (deterministic: seeded numpy, gguf-py's GGUFWriter, qtool's imatrix writer):
- `tiny-256.gguf`: a 2-layer llama-architecture F16 model, n_embd 256, n_ff 512, 4 heads / 2 kv
  heads, vocab 128, untied output, F32 norms, no tokenizer (llama-quantize does not load one).
- `tiny-320.gguf`: the same with n_embd 320 / n_ff 640: rows that are not a multiple of 256, so the
  k-quant and IQ4_XS mixes use their fallback types.
- `tiny-{256,320}.imatrix.gguf`: a synthetic importance matrix (in_sum2 + counts of every blk.*
  2-D weight, imatrix.datasets / chunk_count / chunk_size), and `.imatrix.dat`, the same converted
  to the legacy format with `qtool imatrix convert`.
- `tensor_types.txt`: a --tensor-type-file.
The models are stored xz-compressed (`*.gguf.xz`, about 1.5x smaller); the tests decompress them.

Manifest `llama_quantize_sha256.json`: case name -> {"model", "args", "sha256", "size"}, where
`args` are llama-quantize's arguments after the input and output paths (options, then TYPE).
A case llama-quantize refuses (or aborts on) has "error" (its last error line) instead of a hash;
"output_name" is the file written for OUTPUT out.gguf when it is not that (--keep-split).
Every case is run as `llama-quantize ARGS[:-1] MODEL OUT ARGS[-1] 2` in this folder (imatrix paths
are relative, as `quantize.imatrix.file` records the path as given). Outputs are not kept.
The script runs an existing llama-quantize binary; it builds nothing.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.join(HERE, "llama_quantize_sha256.json")

# name -> (n_embd, n_ff, seed, second layer reuses the first one's rows)
MODELS = {"tiny-256": (256, 512, 256, False), "tiny-320": (320, 640, 320, True)}
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_VOCAB = 128

FTYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
          "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS"]

# option cases: name -> llama-quantize options (the ftype follows)
OPTION_CASES: dict[str, tuple[list[str], str]] = {
    "pure-Q4_K_M": (["--pure"], "Q4_K_M"),
    "pure-Q3_K_M-im": (["--pure", "--imatrix", "{im}.gguf"], "Q3_K_M"),
    "otype-q8_0-etype-q4_k-Q5_K_M": (["--output-tensor-type", "q8_0", "--token-embedding-type", "q4_k"], "Q5_K_M"),
    "otype-iq4_nl-etype-q5_1-Q3_K_M": (["--output-tensor-type", "iq4_nl", "--token-embedding-type", "q5_1"],
                                       "Q3_K_M"),
    "tensor-type-ffn_down-q6_k-Q4_0": (["--tensor-type", "ffn_down=q6_k"], "Q4_0"),
    "tensor-type-multi-Q4_K_S": (["--tensor-type", "attn_q=q8_0", "--tensor-type", r"blk\.1\..*=q5_1"], "Q4_K_S"),
    "leave-output-Q4_K_M": (["--leave-output-tensor"], "Q4_K_M"),
    "override-kv-Q8_0": (["--override-kv", "general.name=str:x", "--override-kv", "tiny.answer=int:-42",
                          "--override-kv", "tiny.ratio=float:0.5", "--override-kv", "tiny.flag=bool:true"], "Q8_0"),
    "prune-layers-1-Q4_K_M": (["--prune-layers", "1"], "Q4_K_M"),
    "prune-layers-0-Q4_0-im": (["--prune-layers", "0", "--imatrix", "{im}.gguf"], "Q4_0"),
    "include-weights-Q4_K_M-im": (["--imatrix", "{im}.gguf", "--include-weights", "ffn_down",
                                   "--include-weights", "attn_v"], "Q4_K_M"),
    "exclude-weights-Q4_0-im": (["--imatrix", "{im}.dat", "--exclude-weights", "ffn_"], "Q4_0"),
    "exclude-weights-all-Q5_1-im": (["--imatrix", "{im}.gguf", "--exclude-weights", "blk."], "Q5_1"),
    "keep-split-Q4_0": (["--keep-split"], "Q4_0"),
    "tensor-type-file-Q4_K_M": (["--tensor-type-file", "tensor_types.txt"], "Q4_K_M"),
    "Q2_K_S-im": (["--imatrix", "{im}.gguf"], "Q2_K_S"),
    "F32": ([], "F32"),
    "COPY": ([], "COPY"),
    "ftype-id-15": ([], "15"),
    "ftype-lower-q5_k_m": ([], "q5_k_m"),
}


def model_path(name: str) -> str:
    return os.path.join(HERE, name + ".gguf.xz")


def _tensors(n_embd: int, n_ff: int, seed: int, reuse_rows: bool) -> list[tuple[str, np.ndarray]]:
    """The model's tensors in file order, as numpy arrays shaped (ne1, ne0) (rows of ne0 values).

    Rows get a log-normal scale each, a few columns are outliers (activation-style), one row of
    blk.0.attn_k is all zeros and one row of blk.1.ffn_up holds a single spike. reuse_rows: the
    second layer's matrices are the first layer's with their rows shuffled (the file compresses
    to about half; quantization is per row, so nothing is lost for these tests).
    """
    rng = np.random.default_rng(seed)
    head_dim = n_embd // N_HEAD
    n_kv = head_dim * N_HEAD_KV

    def mat(rows: int, cols: int, std: float) -> np.ndarray:
        x = rng.standard_normal((rows, cols)) * std
        x *= np.exp(rng.normal(0.0, 0.3, (rows, 1)))
        hot = rng.choice(cols, size=max(1, cols // 64), replace=False)
        x[:, hot] *= 4.0
        return x.astype(np.float16)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    ts: list[tuple[str, np.ndarray]] = [("token_embd.weight", mat(N_VOCAB, n_embd, 0.05))]
    shapes = {"attn_q": (n_embd, n_embd, 0.04), "attn_k": (n_kv, n_embd, 0.04), "attn_v": (n_kv, n_embd, 0.02),
              "attn_output": (n_embd, n_embd, 0.02), "ffn_gate": (n_ff, n_embd, 0.03),
              "ffn_up": (n_ff, n_embd, 0.03), "ffn_down": (n_embd, n_ff, 0.02)}
    first: dict[str, np.ndarray] = {}
    for i in range(N_LAYER):
        p = f"blk.{i}."
        m: dict[str, np.ndarray] = {}
        for t, (rows, cols, std) in shapes.items():
            if i > 0 and reuse_rows:
                m[t] = first[t][rng.permutation(rows)]
            else:
                m[t] = first[t] = mat(rows, cols, std)
        if i == 0:
            m["attn_k"] = m["attn_k"].copy()
            m["attn_k"][3] = 0
        if i == 1:
            m["ffn_up"] = m["ffn_up"].copy()
            m["ffn_up"][5] = 0
            m["ffn_up"][5, 7] = 1.5
        ts += [(p + "attn_norm.weight", norm(n_embd))]
        ts += [(p + t + ".weight", m[t]) for t in ("attn_q", "attn_k", "attn_v", "attn_output")]
        ts += [(p + "ffn_norm.weight", norm(n_embd))]
        ts += [(p + t + ".weight", m[t]) for t in ("ffn_gate", "ffn_up", "ffn_down")]
    ts += [("output_norm.weight", norm(n_embd)), ("output.weight", mat(N_VOCAB, n_embd, 0.03))]
    return ts


def write_model(path: str, name: str, n_embd: int, n_ff: int, seed: int, reuse_rows: bool) -> None:
    """An F16 llama GGUF with gguf-py's GGUFWriter (no tokenizer keys)."""
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_string("general.name", name)
    w.add_uint32("llama.context_length", 256)
    w.add_uint32("llama.embedding_length", n_embd)
    w.add_uint32("llama.block_count", N_LAYER)
    w.add_uint32("llama.feed_forward_length", n_ff)
    w.add_uint32("llama.rope.dimension_count", n_embd // N_HEAD)
    w.add_uint32("llama.attention.head_count", N_HEAD)
    w.add_uint32("llama.attention.head_count_kv", N_HEAD_KV)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32("llama.vocab_size", N_VOCAB)
    w.add_uint32("general.file_type", 1)
    for tname, arr in _tensors(n_embd, n_ff, seed, reuse_rows):
        w.add_tensor(tname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_imatrix(gguf_path: str, dat_path: str, n_embd: int, n_ff: int, seed: int) -> None:
    """Synthetic imatrix for every blk.* 2-D weight: in_sum2 of 4 chunks of 512 tokens."""
    from qtool.imatrix import ImatrixData, ImatrixEntry, write_gguf

    rng = np.random.default_rng(seed + 1)
    chunk_size, chunks = 512, 4
    ents: dict[str, ImatrixEntry] = {}
    for i in range(N_LAYER):
        for t in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            n = n_ff if t == "ffn_down" else n_embd
            col = rng.gamma(0.7, 1.5, n)  # per-column mean square activation
            col[rng.choice(n, size=max(1, n // 64), replace=False)] *= 30.0
            count = chunk_size * chunks
            sums = (col * count * rng.uniform(0.9, 1.1, n)).astype(np.float32)
            ents[f"blk.{i}.{t}.weight"] = ImatrixEntry(sums.reshape(1, n), np.array([count]))
    data = ImatrixData(ents, ["synthetic-tiny.txt"], chunks, chunk_size)
    write_gguf(data, gguf_path)
    subprocess.run([sys.executable, "-m", "qtool", "imatrix", "convert", gguf_path, dat_path], check=True,
                   stdout=subprocess.DEVNULL)


def make_fixtures() -> None:
    for name, (n_embd, n_ff, seed, reuse_rows) in MODELS.items():
        with tempfile.TemporaryDirectory() as d:
            raw = os.path.join(d, name + ".gguf")
            write_model(raw, name, n_embd, n_ff, seed, reuse_rows)
            with open(raw, "rb") as f, lzma.open(model_path(name), "wb", preset=9 | lzma.PRESET_EXTREME) as g:
                g.write(f.read())
        write_imatrix(os.path.join(HERE, name + ".imatrix.gguf"), os.path.join(HERE, name + ".imatrix.dat"),
                      n_embd, n_ff, seed)


def cases() -> dict[str, tuple[str, list[str]]]:
    """case name -> (model, llama-quantize args after INPUT OUTPUT: options then TYPE)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for m in MODELS:
        for ft in FTYPES:
            out[f"{m}-{ft}"] = (m, [ft])
            out[f"{m}-{ft}-im"] = (m, ["--imatrix", f"{m}.imatrix.gguf", ft])
            out[f"{m}-{ft}-imdat"] = (m, ["--imatrix", f"{m}.imatrix.dat", ft])
        for cname, (opts, ft) in OPTION_CASES.items():
            out[f"{m}-{cname}"] = (m, [a.replace("{im}", f"{m}.imatrix") for a in opts] + [ft])
    return out


def run_cases(exe: str, cases: dict[str, tuple[str, list[str]]], manifest_path: str) -> None:
    """Run `exe ARGS[:-1] MODEL OUT ARGS[-1] 2` in this folder for each case (model, args) on the
    decompressed fixtures and write {"model", "args", "sha256", "size"} or {"model", "args", "error"}
    (the last line the tool printed when it refused) per case name: the manifests of
    make_ik_refs.py and make_lattice_refs.py."""
    manifest: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as d:
        for m in MODELS:
            with lzma.open(model_path(m)) as f, open(os.path.join(d, f"{m}.gguf"), "wb") as g:
                g.write(f.read())
        for name, (m, args) in cases.items():
            out = os.path.join(d, "out.gguf")
            r = subprocess.run([exe, *args[:-1], os.path.join(d, f"{m}.gguf"), out, args[-1], "2"], cwd=HERE,
                               capture_output=True, text=True)
            entry: dict[str, object] = {"model": m, "args": args}
            if r.returncode != 0 or not os.path.exists(out):
                lines = [ln for ln in (r.stderr + r.stdout).strip().splitlines() if ln.strip()]
                entry["error"] = lines[-1] if lines else f"exit {r.returncode}"
            else:
                entry.update(sha256=sha256(out), size=os.path.getsize(out))
                os.unlink(out)
            manifest[name] = entry
            print(name, entry.get("sha256", entry.get("error")), flush=True)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def make_manifest(llama_quantize: str) -> None:
    manifest: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as d:
        inputs = {}
        for m in MODELS:
            inputs[m] = os.path.join(d, m + ".gguf")
            with lzma.open(model_path(m)) as f, open(inputs[m], "wb") as g:
                g.write(f.read())
        for cname, (m, args) in cases().items():
            out_dir = os.path.join(d, "out")
            os.makedirs(out_dir, exist_ok=True)
            out = os.path.join(out_dir, "out.gguf")
            cmd = [llama_quantize, *args[:-1], inputs[m], out, args[-1], "2"]
            r = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
            if r.returncode != 0:  # llama-quantize refuses (or asserts): qtool must refuse too
                lines = [ln for ln in (r.stdout + r.stderr).splitlines()
                         if any(k in ln for k in ("error", "ERROR", "failed", "ASSERT"))]
                err = lines[-1] if lines else f"exit status {r.returncode}"
                err = err[err.find("GGML_ASSERT"):] if "GGML_ASSERT" in err else err
                manifest[cname] = {"model": m, "args": args, "error": err}
                print(f"{cname:45s} FAILS: {manifest[cname]['error']}")
                for n in os.listdir(out_dir):
                    os.unlink(os.path.join(out_dir, n))
                continue
            written = sorted(os.listdir(out_dir))
            assert len(written) == 1, written  # out.gguf, or out-00001-of-00001.gguf with --keep-split
            out = os.path.join(out_dir, written[0])
            manifest[cname] = {"model": m, "args": args, "sha256": sha256(out), "size": os.path.getsize(out)}
            if written[0] != "out.gguf":
                manifest[cname]["output_name"] = written[0]
            os.unlink(out)
            print(f"{cname:45s} {manifest[cname]['size']:9d} {manifest[cname]['sha256'][:16]}")
    with open(MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        sys.exit(__doc__)
    make_fixtures()
    if argv[0] != "--fixtures-only":
        make_manifest(argv[0])


if __name__ == "__main__":
    main(sys.argv[1:])
