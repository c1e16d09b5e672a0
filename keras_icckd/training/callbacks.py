"""Keras callbacks used by the runs."""

import keras
import numpy as np

from keras_icckd.training.diagnostics import class_distance_stats


class ClassDistanceDiagnostics(keras.callbacks.Callback):
    """Adds the teacher's intra/inter-class feature distances to each epoch's logs.

    At the end of every epoch the pooled features ("embedding" output of the backbone) of
    a fixed held-out sample are computed in inference mode and summarised by
    `class_distance_stats`. The values are written into `logs`, so History, the results
    file and TensorBoard all receive them; place this callback before those.

    Args:
        backbone: a backbone whose outputs include "embedding".
        images: (N, H, W, C) float inputs, already normalised like the training data.
        labels: (N,) integer labels.
        batch_size: inference batch size.
    """

    def __init__(self, backbone, images, labels, batch_size=256):
        super().__init__()
        self.images, self.labels, self.batch_size = images, np.asarray(labels), batch_size
        self._features = keras.Model(backbone.inputs, backbone.output["embedding"])

    def stats(self):
        features = self._features.predict(self.images, batch_size=self.batch_size, verbose=0)
        return class_distance_stats(features, self.labels)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.stats())
