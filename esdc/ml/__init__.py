"""Machine learning on cubes: patch streaming, framework adapters, training on Dask.

Heavy frameworks (torch, tensorflow, scikit-learn) are imported lazily by their
adapters; the error names the extra to install.
"""

from esdc.ml.patches import Batch, Patch, PatchStream, block_splits
from esdc.ml.stats import cube_statistics, write_statistics

__all__ = ["Batch", "Patch", "PatchStream", "block_splits", "cube_statistics", "write_statistics"]
