"""Per-channel mean and standard deviation of a dataset's training images, scaled to [0, 1].

    python experiments/normalization_constants.py --dataset=tinyimagenet
    python experiments/normalization_constants.py --dataset=folder --data_dir=PATH

Prints the constants that `keras_icckd.data.normalization_for` uses (the population statistics
over every pixel of the training split, accumulated in float64), rounded to 4 decimals.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from keras_icckd import data  # noqa: E402


def channel_statistics(images, chunk=4096):
    """(mean, std) per channel of uint8 images (N, H, W, C) scaled to [0, 1], in float64.

    Args:
        images: uint8 array (N, H, W, C).
        chunk: images summed at a time (bounds the float64 working memory).

    Example:
    >>> channel_statistics(np.array([[[[0, 255, 51]]], [[[255, 255, 153]]]], np.uint8))
    (array([0.5, 1. , 0.4]), array([0.5, 0. , 0.2]))
    """
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        total += block.sum(0)
        squares += np.square(block).sum(0)
    count = images.size // images.shape[-1]
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tinyimagenet", choices=("tinyimagenet", "folder"))
    parser.add_argument("--data_dir", default=None, help="Default: the dataset's default location.")
    args = parser.parse_args()
    splits = data.load(args.dataset, args.data_dir)
    mean, std = channel_statistics(splits.train_images)
    print(f"{splits.name}: {len(splits.train_images)} training images {splits.train_images.shape[1:]}")
    print(f"MEAN = ({', '.join(f'{m:.4f}' for m in mean)})")
    print(f"STD = ({', '.join(f'{s:.4f}' for s in std)})")


if __name__ == "__main__":
    main()
