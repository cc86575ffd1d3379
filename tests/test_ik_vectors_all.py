"""Every golden vector of ik_llama.cpp (tests/data/vectors/ik_llama/, copied from
../shared/vectors/ik_llama/ with its index.json): every type the index lists has its file here,
and every variant (with / without an imatrix) of every type is byte-identical under
`--flavour ik`, its dequantization bit-identical. The per-family test files check more (scalar
ports, extra rows, edge rows); this one makes sure no ik type or variant is left out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qtool.quants import engine

from .vectors import VECTORS, expected, inputs, mismatched_rows

INDEX = json.loads((VECTORS / "ik_llama" / "index.json").read_text())["types"]
CASES = [(t, v) for t, info in INDEX.items() for v in info["variants"]]


def test_every_indexed_type_has_its_vectors_here() -> None:
    assert sorted(p.stem for p in (VECTORS / "ik_llama").glob("*.npz") if p.stem != "inputs") == sorted(INDEX)


@pytest.mark.parametrize(("qtype", "variant"), CASES)
def test_ik_vector(qtype: str, variant: str) -> None:
    x, imatrix, kinds = inputs("ik_llama")
    e = expected(qtype, "ik_llama")
    got = engine.quantize(x, qtype, imatrix if variant == "q_im" else None, flavour="ik")
    bad = mismatched_rows(got, e[variant])
    assert bad == [], f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"
    deq = "deq_" + variant[2:]
    if deq in e:
        d = engine.dequantize(e[variant], qtype, x.shape[1])
        assert np.array_equal(d.view(np.uint32), e[deq].view(np.uint32)), f"{qtype} {deq}"
