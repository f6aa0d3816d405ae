"""TensorBoard next to MLflow: event files of training runs and the embedding projector.

Every run of :func:`esdc.ml.train.train` writes TensorBoard event files (the per-epoch
scalars its fitter logs to MLflow: ``train_loss``, ``val_<metric>``, ``learning_rate``;
the test and baseline metrics at the end) and stores them in the MLflow run's artifacts
under ``tensorboard/``; ``esdc train --tensorboard DIR`` writes them to ``DIR/<run id>``
too, with the model graph (PyTorch: ``torch.utils.tensorboard``; Keras: its
``TensorBoard`` callback, which also logs ``epoch_loss`` and ``epoch_learning_rate``).
``esdc embed`` writes the embedding projector (a sample of tile vectors, ``metadata.tsv``
and a sprite of tile thumbnails) into the encoder's run artifacts under
``tensorboard/embed`` (and ``DIR/embed-<run id>`` with ``--tensorboard DIR``). View
them with ``tensorboard --logdir DIR`` (or the run's downloaded ``tensorboard`` folder).

Scalars are written with TensorBoard's own record writer and protocol buffers, so writing
them imports neither TensorFlow nor PyTorch; the model graph imports the framework's
TensorBoard support and is written only when a folder was asked for.

The ``tensorboard`` package: ``pip install 'esdc[tensorboard]'`` (also in ``ml``).
"""

from __future__ import annotations

import itertools
import os
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from esdc.errors import OutputPathError

__all__ = ["TensorBoardLog", "log_tensorboard", "tensorboard_dir", "write_projector"]

_COUNTER = itertools.count()


def tensorboard_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written in it.

    Parameters
    ----------
    path : str or pathlib.Path
        Folder for TensorBoard files (``esdc train --tensorboard DIR``).

    Returns
    -------
    pathlib.Path
        The folder, absolute.

    Raises
    ------
    OutputPathError
        If the folder cannot be created (a file is in the way) or written.
    """
    folder = Path(path).expanduser().absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".esdc-write-test-"):
            pass
    except OSError as exc:
        raise OutputPathError(f"tensorboard={path}: TensorBoard files cannot be written there "
                              f"({exc.strerror or exc}); choose a folder you can write to."
                              ) from None
    return folder


class TensorBoardLog:
    """One TensorBoard run folder: scalars now, the model graph when asked for.

    Parameters
    ----------
    logdir : pathlib.Path
        The run's folder (created); event files go there.
    graph : bool
        Write the model graph (:meth:`torch_graph`, :meth:`keras_callback`).
    """

    def __init__(self, logdir: Path, graph: bool = False) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.logdir, self.graph = tensorboard_dir(logdir), graph
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_COUNTER)}")
        self._writer = RecordWriter(open(self.logdir / name, "wb"))  # noqa: SIM115
        self._event = Event
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())
        self._writer.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Write scalar values (``tag -> value``) at ``step`` (an epoch)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=str(k), simple_value=float(v))
                                 for k, v in values.items()])
        self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def torch_graph(self, model: Any, example: Any) -> None:
        """Write a PyTorch model's graph, traced on ``example`` (when ``graph`` is set)."""
        if not self.graph:
            return
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(self.logdir)) as writer:
            writer.add_graph(model, example)

    def keras_callback(self) -> Any:
        """Keras' ``TensorBoard`` callback writing into ``logdir`` (graph when asked for)."""
        import keras

        return keras.callbacks.TensorBoard(log_dir=str(self.logdir), write_graph=self.graph,
                                           histogram_freq=0, update_freq="epoch")

    def close(self) -> None:
        """Flush and close the event file."""
        if not self._writer.closed:
            self._writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def log_tensorboard(logdir: Path, artifact_path: str = "tensorboard",
                    run_id: str | None = None, tracking_uri: str | None = None) -> None:
    """Store a TensorBoard folder in an MLflow run's artifacts.

    Parameters
    ----------
    logdir : pathlib.Path
        The folder (event files, projector files).
    artifact_path : str
        Folder of the run's artifacts it goes to.
    run_id : str, optional
        A finished run (``esdc embed`` adds the projector to the encoder's run); default
        the active run.
    tracking_uri : str, optional
        MLflow tracking URI of ``run_id``.
    """
    import mlflow

    if run_id is None:
        mlflow.log_artifacts(str(logdir), artifact_path=artifact_path)
    else:
        mlflow.MlflowClient(tracking_uri).log_artifacts(run_id, str(logdir), artifact_path)


def _sprite(thumbnails: np.ndarray) -> tuple[np.ndarray, int]:
    """Square sprite ``(S*n, S*n, 3)`` uint8 of ``(N, S, S, 3)`` thumbnails; and ``S``."""
    n, size = thumbnails.shape[0], thumbnails.shape[1]
    side = int(np.ceil(np.sqrt(n)))
    sheet = np.zeros((side * size, side * size, 3), dtype="uint8")
    for i, img in enumerate(thumbnails):
        r, c = divmod(i, side)
        sheet[r * size:(r + 1) * size, c * size:(c + 1) * size] = img
    return sheet, size


def write_projector(logdir: Path, embeddings: Mapping[str, tuple[np.ndarray,
                    Mapping[str, Sequence[Any]], np.ndarray | None]]) -> Path:
    """Write TensorBoard's embedding projector files for sampled vectors.

    For each name: ``NAME/tensors.tsv`` (the vectors), ``NAME/metadata.tsv`` (one row
    per vector with a header of the metadata columns) and ``NAME/sprite.png`` (the
    thumbnails), listed in ``projector_config.pbtxt``; and an event file, so that
    TensorBoard shows the folder as a run.

    Parameters
    ----------
    logdir : pathlib.Path
        Folder (created).
    embeddings : mapping
        ``name -> (vectors, metadata, thumbnails)``: vectors ``(N, D)`` float,
        metadata ``column -> N values``, thumbnails ``(N, S, S, 3)`` uint8 or None.

    Returns
    -------
    pathlib.Path
        ``logdir``.

    Raises
    ------
    OutputPathError
        If ``logdir`` cannot be written.
    """
    from google.protobuf import text_format
    from PIL import Image
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    config = ProjectorConfig()
    with TensorBoardLog(logdir) as log:
        for name, (vectors, meta, thumbs) in embeddings.items():
            folder = log.logdir / name
            folder.mkdir(exist_ok=True)
            np.savetxt(folder / "tensors.tsv", np.asarray(vectors, dtype="float32"),
                       delimiter="\t", fmt="%.6g")
            cols = list(meta)
            rows = ["\t".join(cols)] + ["\t".join(str(meta[c][i]).replace("\t", " ")
                                                  for c in cols)
                                        for i in range(len(vectors))]
            (folder / "metadata.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
            emb = config.embeddings.add()
            emb.tensor_name = name
            emb.tensor_path = f"{name}/tensors.tsv"
            emb.metadata_path = f"{name}/metadata.tsv"
            if thumbs is not None and len(thumbs):
                sheet, size = _sprite(np.asarray(thumbs, dtype="uint8"))
                Image.fromarray(sheet).save(folder / "sprite.png")
                emb.sprite.image_path = f"{name}/sprite.png"
                emb.sprite.single_image_dim.extend([size, size])
            log.scalars(0, {f"{name}/vectors": len(vectors)})
        (log.logdir / "projector_config.pbtxt").write_text(text_format.MessageToString(config),
                                                           encoding="utf-8")
    return log.logdir
