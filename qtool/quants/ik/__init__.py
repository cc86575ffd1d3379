"""ik_llama.cpp's own types and its flavour of mainline types; each module registers its
kernels (qtool.quants.registry) for the variants it ports. Variants ik_llama.cpp quantizes its
own way that are not ported are not registered: the engine refuses them rather than write
mainline's bytes (measured on the golden vectors: most rows differ)."""

from . import (
    bitnet,
    iq1_r4,
    iq2_k,
    iq2_kl,
    iq2_ks,
    iq3_k,
    iq3_ks,
    iq4_ik,
    iq4_kss,
    iq45_ks,
    iqk_k456,
    kquants_q23_ik,
    kquants_q45_ik,
    lattice_ik,
    legacy_ik,
    q6_0,
    q6_k_ik,
    q8_kv,
    repack,
    repack_iqk,
    repack_lattice,
    trellis,
)

__all__ = ["bitnet", "iq1_r4", "iq2_k", "iq2_kl", "iq2_ks", "iq3_k", "iq3_ks", "iq45_ks", "iq4_ik", "iq4_kss",
           "iqk_k456", "kquants_q23_ik", "kquants_q45_ik", "lattice_ik", "legacy_ik", "q6_0", "q6_k_ik", "q8_kv",
           "repack", "repack_iqk", "repack_lattice", "trellis"]
