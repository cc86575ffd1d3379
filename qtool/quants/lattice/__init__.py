"""Lattice (grid) i-quants of mainline ggml: IQ1_S, IQ1_M, IQ2_*, IQ3_*."""
