"""Machine learning on cubes: patch streaming, framework adapters, training on Dask.

Heavy frameworks (torch, tensorflow, scikit-learn) are imported lazily by their
adapters; the error names the extra to install. Modules, leaves first (each imports only
modules before it)::

    stats, metrics, estimators              cube statistics; scores, baselines, classes;
                                            the scikit-learn estimators
    patches, config                         PatchStream; the training-config schema
    datareport                              patches and pixels per split and class, warnings
    tuning, tracking                        spatial-CV search; MLflow runs
    torch, keras, models, ssl, serving      framework adapters, networks, model serving
    fit                                     the fitter registry (name -> module)
    fit.sklearn fit.torch fit.keras         one fitter per framework, imported when a
    fit.simsiam                             config names it
    train                                   the one entry: train(), submit(), check_fits()

:mod:`esdc.embed` is above this package: it uses the encoder the SimSiam fitter trains.
"""

from esdc.ml.patches import Batch, Patch, PatchStream, block_splits
from esdc.ml.stats import cube_statistics, write_statistics

__all__ = ["Batch", "Patch", "PatchStream", "block_splits", "cube_statistics", "write_statistics"]
