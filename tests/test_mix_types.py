"""The mix reads type knowledge from the type table: row-interleaved repacks, block sizes, ftype ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.mix import MixError, TensorSpec
from qtool.mix.ik import change_type_if_necessary
from qtool.mix.mainline import loader_ftype
from qtool.mix.state import is_quantized, plain_type
from qtool.quants.types import all_types

# ik_llama.cpp src/llama-quantize.cpp interleaved_properties' k_map
IK_INTERLEAVED = {
    "Q4_0_4_4": ("Q4_0", 4), "Q4_0_4_8": ("Q4_0", 4), "Q4_0_8_8": ("Q4_0", 8),
    "Q4_0_R8": ("Q4_0", 8), "Q5_0_R4": ("Q5_0", 4), "Q6_0_R4": ("Q6_0", 4), "Q8_0_R8": ("Q8_0", 8),
    "Q2_K_R4": ("Q2_K", 4), "Q3_K_R4": ("Q3_K", 4), "Q4_K_R4": ("Q4_K", 4), "Q5_K_R4": ("Q5_K", 4),
    "Q6_K_R4": ("Q6_K", 4), "IQ2_XXS_R4": ("IQ2_XXS", 4), "IQ2_XS_R4": ("IQ2_XS", 4),
    "IQ2_S_R4": ("IQ2_S", 4), "IQ3_XXS_R4": ("IQ3_XXS", 4), "IQ3_S_R4": ("IQ3_S", 4),
    "IQ4_XS_R8": ("IQ4_XS", 8), "IQ4_NL_R4": ("IQ4_NL", 4), "IQ1_S_R4": ("IQ1_S", 4),
    "IQ1_M_R4": ("IQ1_M", 4), "IQ2_BN_R4": ("IQ2_BN", 4), "IQ2_K_R4": ("IQ2_K", 4),
    "IQ3_K_R4": ("IQ3_K", 4), "IQ4_K_R4": ("IQ4_K", 4), "IQ4_KS_R4": ("IQ4_KS", 4),
    "IQ5_KS_R4": ("IQ5_KS", 4), "IQ5_K_R4": ("IQ5_K", 4), "MXFP4_R8": ("MXFP4", 8),
    "Q8_KV_R8": ("Q8_KV", 8), "Q8_K_R8": ("Q8_0", 8), "BF16_R16": ("BF16", 16),
}


def test_plain_type_is_ik_interleaved_properties() -> None:
    for t in all_types("ik"):
        assert plain_type(t.name) == IK_INTERLEAVED.get(t.name, (t.name, 1)), t.name
    assert not is_quantized("BF16_R16") and is_quantized("Q4_K_R4") and not is_quantized("F16")


def test_row_length_fallback_of_repacked_and_bitnet_types() -> None:
    assert change_type_if_necessary("Q4_K_R4", 512) == "Q4_K_R4"
    assert change_type_if_necessary("Q4_K_R4", 96) == "Q5_0"
    assert change_type_if_necessary("IQ4_XS_R8", 96) == "IQ4_NL"
    assert change_type_if_necessary("Q8_K_R8", 96) == "Q8_0"
    assert change_type_if_necessary("Q4_0_R8", 96) == "Q4_0_R8"  # not in ik's lists: unchecked
    assert change_type_if_necessary("IQ2_BN_R4", 128) == "IQ2_BN_R4"
    with pytest.raises(MixError, match="row length 96 for iq2_bn_r4"):
        change_type_if_necessary("IQ2_BN_R4", 96)


# llama_model_loader's guess (enum llama_ftype values), | LLAMA_FTYPE_GUESSED
GUESSED = {
    "F32": 0, "F16": 1, "BF16": 32, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q8_0": 7,
    "Q2_K": 10, "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "TQ1_0": 36, "TQ2_0": 37,
    "IQ2_XXS": 19, "IQ2_XS": 20, "IQ2_S": 28, "IQ3_XXS": 23, "IQ1_S": 24, "IQ1_M": 31,
    "IQ4_NL": 25, "IQ4_XS": 30, "IQ3_S": 26, "NVFP4": 39, "Q1_0": 40, "Q2_0": 41,
}


def test_copy_guesses_the_file_type_from_the_most_common_type() -> None:
    for t in all_types("mainline"):
        specs = [TensorSpec(f"t{i}.weight", (256, 4), t.name) for i in range(2)] + [TensorSpec("x", (4,), "F32")]
        assert loader_ftype(specs, {}) == GUESSED.get(t.name, 0) | 1024, t.name
    assert loader_ftype([], {"general.file_type": 7}) == 7


def test_show_prints_the_bytes_of_repacked_types(tiny256: Path) -> None:
    r = CliRunner().invoke(cli, ["mix", "show", str(tiny256), "Q4_K_R4", "--flavour", "ik", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert any(t["type"] == "Q4_K_R4" for t in d["tensors"])
    assert d["totals"]["bytes"] is not None and all(t["bytes"] is not None for t in d["tensors"])
