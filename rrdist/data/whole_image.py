"""An FFCV decoder that resizes each whole image (any size, any aspect) to one square base image.

FFCV's crop decoders take one crop per decode; K views from one decode need the whole image. The
base image stretches the image to a square: views drawn in the image's own (height, width)
coordinates and mapped onto the base keep the image's true aspect (`KViewAugment`).
"""

from __future__ import annotations

import numpy as np
from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder


def whole_image(height, width, scale, ratio):
    """The crop FFCV's decoder resizes: the image itself (compiled by numba inside FFCV)."""
    return 0, 0, height, width


class WholeImageDecoder(ResizedCropRGBImageDecoder):
    """Decode (FFCV's JPEG decode, on its threads) and resize the whole image to `output_size`."""

    def __init__(self, output_size: tuple[int, int]) -> None:
        super().__init__(output_size)
        self.scale = np.array([1.0, 1.0])  # unused by `whole_image`; FFCV passes them on
        self.ratio = np.array([1.0, 1.0])

    @property
    def get_crop_generator(self):
        return whole_image
