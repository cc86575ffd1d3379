"""Quantization error statistics (`qtool stats`): metrics, the report runner, plots, low-rank study."""

from .metrics import HISTOGRAM_BUCKETS, HISTOGRAM_RANGE, ErrorStats
from .report import StatsError, StatsReport, TensorResult, TypeResult, run_stats
from .svd import LowRankResidual, lowrank_residuals

__all__ = ["HISTOGRAM_BUCKETS", "HISTOGRAM_RANGE", "ErrorStats", "LowRankResidual", "StatsError", "StatsReport",
           "TensorResult", "TypeResult", "lowrank_residuals", "run_stats"]
