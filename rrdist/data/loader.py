"""FFCV loaders: decode each image once, as uint8 [B, H, W, 3]; views are made on the device.

Images of one size stored raw are read as they are. Images of any size (JPEG records) are decoded
by FFCV's threads and resized whole to a square base image (`base_side`); for training the loader
also gives every image's stored (height, width), so that views are drawn in the image's own
coordinates (`KViewAugment`) and nothing at its edges is lost. Evaluation reads a centre crop
(`eval_crop` of the shorter side) resized to the view size, as ImageNet evaluations do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rrdist.data.ffcv_import import load_ffcv
from rrdist.errors import DataError, first_line


def global_batch_order(count: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                       workers: int = 1) -> np.ndarray:
    """The images (positions in the split) worker `rank` reads in `epoch`, batch after batch.

    One seeded permutation per epoch, cut into global batches of `batch_size` (the last partial
    batch is dropped); worker r takes the r-th contiguous share of every batch (shares differ by one
    image at most: `shares`). Concatenating the workers' shares of a batch in rank
    order gives that batch as one worker reads it.
    """
    from rrdist.data.keyed import key

    start, stop = share_of(batch_size, rank, workers)
    permutation = np.random.default_rng(key(seed, epoch, 0x0D4E)).permutation(count)
    batches = permutation[:(count // batch_size) * batch_size].reshape(-1, batch_size)
    return batches[:, start:stop].reshape(-1)


def shares(M: int, n: int) -> list[int]:
    """Images of each of n workers in a global batch of M: the first M mod n hold one more."""
    q, extra = divmod(M, n)
    return [q + (r < extra) for r in range(n)]


def share_of(batch_size: int, rank: int, workers: int) -> tuple[int, int]:
    """[start, stop) of worker `rank`'s images in every global batch."""
    sizes = shares(batch_size, workers)
    return sum(sizes[:rank]), sum(sizes[:rank + 1])


def _global_batch_traversal(batch_size: int, seed: int, rank: int, workers: int):
    """An FFCV traversal order (FFCV takes an instance and calls it with the loader) that reads
    `global_batch_order`."""
    from ffcv.traversal_order.base import TraversalOrder

    class GlobalBatchOrder(TraversalOrder):
        def __init__(self) -> None:  # bound to its loader when FFCV calls it
            self.skip: tuple[int, int] | None = None  # (epoch, steps): where a resumed epoch starts

        def __call__(self, loader) -> "GlobalBatchOrder":
            super().__init__(loader)
            return self

        def sample_order(self, epoch: int) -> np.ndarray:
            order = global_batch_order(len(self.indices), batch_size, seed, epoch, rank, workers)
            if self.skip is not None and self.skip[0] == epoch:  # the same order, its first steps left out
                start, stop = share_of(batch_size, rank, workers)
                order = order[self.skip[1] * (stop - start):]
            return self.indices[order]

    return GlobalBatchOrder()


def decoding(manifest: dict) -> dict:
    """`image_loader`'s view_size and eval_crop for a prepared dataset's manifest."""
    return {"view_size": int(manifest["image_size"]), "eval_crop": float(manifest.get("eval_crop", 1.0))}


def base_side(view_size: int, largest_side: int) -> int:
    """The side of the square base image the views of images of any size are made from: the
    view size enlarged by 256/224 (ImageNet's resize-then-crop ratio), at most the largest stored side."""
    return max(view_size, min(largest_side, round(view_size * 256 / 224)))


def stored_sizes(path: str | Path) -> np.ndarray | None:
    """int64 [N, 2] (height, width) of every image of a .beton of images of different sizes or
    JPEG records; None for raw images of one size."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    meta = reader.metadata[f"f{reader.field_names.index('image')}"]
    if (meta["mode"] == 1).all() and len(np.unique(meta["height"])) <= 1 and len(np.unique(meta["width"])) <= 1:
        return None
    return np.stack([meta["height"], meta["width"]], axis=1).astype(np.int64)


def _image_decoder(sizes: np.ndarray | None, train: bool, view_size: int | None, eval_crop: float):
    """FFCV's decoder for the image field (see the module's docstring)."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, SimpleRGBImageDecoder

    if sizes is None:
        return SimpleRGBImageDecoder()
    if view_size is None:
        raise ValueError("a loader over images of different sizes needs the view size")
    if not train:
        return CenterCropRGBImageDecoder((view_size, view_size), ratio=eval_crop)
    from rrdist.data.whole_image import WholeImageDecoder

    side = base_side(view_size, int(sizes.max()))
    return WholeImageDecoder((side, side))


def image_loader(path: str | Path, batch_size: int, *, train: bool, num_workers: int = 1, seed: int = 0,
                 rank: int = 0, workers: int = 1, device: torch.device | None = None,
                 drop_last: bool | None = None, indices: bool = False, subset=None,
                 view_size: int | None = None, eval_crop: float = 1.0):
    """An FFCV Loader over a .beton: for training the global-batch order (`global_batch_order`:
    `batch_size` is the global batch, each of `workers` workers reads its share of it), otherwise
    sequential.

    With `indices=True` each batch also carries the images' positions in the split (file order);
    `subset` (positions) reads only those images. `view_size` and `eval_crop`: how images of
    different sizes are decoded (the module's docstring); ignored for raw images of one size.
    """
    load_ffcv()
    from ffcv.fields.decoders import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToDevice, ToTensor

    if batch_size < workers:
        raise ValueError(f"a global batch of {batch_size} cannot be split over {workers} workers")
    if batch_size < 1 or num_workers < 1:  # settings, not the file: checked before FFCV sees them
        raise DataError(f"a loader needs a batch size and decoding threads of at least 1 (got {batch_size} and "
                        f"{num_workers}): pass --batch-size 1 or more")
    if not Path(path).is_file():
        raise DataError(f"{path} does not exist: run `rrdist data prepare` for its dataset")

    try:
        sizes = stored_sizes(path)
    except Exception as e:  # FFCV's reader raises assorted errors on unreadable files
        raise DataError(f"cannot read {path} ({type(e).__name__}: {first_line(e)}): it may be corrupt; "
                        f"`rrdist data prepare <dataset> --root <root> --force` writes it again") from None
    image = [_image_decoder(sizes, train, view_size, eval_crop), ToTensor()]
    label = [IntDecoder(), ToTensor()]
    index = [IntDecoder(), ToTensor()] if indices else None  # None: the field is not decoded
    if device is not None and device.type == "cuda":
        image.append(ToDevice(device, non_blocking=True))
        label.append(ToDevice(device, non_blocking=True))
        if index is not None:
            index.append(ToDevice(device, non_blocking=True))
    start, stop = share_of(batch_size, rank, workers)
    share = stop - start
    threads = torch.get_num_threads()
    try:
        loader = Loader(
            str(path), batch_size=share if train else batch_size, num_workers=num_workers,
            order=_global_batch_traversal(batch_size, seed, rank, workers) if train else OrderOption.SEQUENTIAL,
            os_cache=True, drop_last=train if drop_last is None else drop_last,
            pipelines={"image": image, "label": label, "index": index}, seed=seed, batches_ahead=3,
            **({"indices": list(map(int, subset))} if subset is not None else {}))
    except Exception as e:  # FFCV raises assorted errors on unreadable files; the settings are checked above
        raise DataError(f"cannot read {path} ({type(e).__name__}: {first_line(e)}): it may be corrupt; "
                        f"`rrdist data prepare <dataset> --root <root> --force` writes it again") from None
    finally:
        torch.set_num_threads(threads)  # FFCV's Loader changes the process-wide thread count
    return Batches(loader, indices, torch.from_numpy(sizes) if sizes is not None and train else None)


def split_size(path: str | Path) -> int:
    """The number of images in a .beton."""
    load_ffcv()
    from ffcv.reader import Reader

    return int(Reader(str(path)).num_samples)


class Batches:
    """An FFCV Loader yielding (uint8 images [B, H, W, 3], int64 labels [B]), plus int64 indices [B]
    when asked for.

    FFCV reuses its output buffers: an image batch is valid until the next one is drawn, so use
    it at once (or clone it). Labels are copied, since callers keep them. FFCV's Squeeze would
    turn a last batch of one label into a 0-d tensor; flattening does not.
    """

    def __init__(self, loader, indices: bool = False, sizes: torch.Tensor | None = None) -> None:
        self.loader = loader
        self.indices = indices
        self.sizes = sizes  # int64 [N, 2]: every image's stored (height, width), when the base image stretches it

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def next_epoch(self) -> int:
        return self.loader.next_epoch

    @next_epoch.setter
    def next_epoch(self, epoch: int) -> None:
        self.loader.next_epoch = epoch

    def resume_at(self, epoch: int, step: int = 0) -> None:
        """Continue a training loader at `step` of `epoch` (counted from 0): the epoch's order as it
        always is, without the batches of its first `step` steps."""
        self.loader.next_epoch = epoch
        self.loader.traversal_order.skip = (epoch, step) if step else None

    def __iter__(self):
        for batch in self.loader:
            if self.indices:
                yield batch[0], batch[1].reshape(-1).clone(), batch[2].reshape(-1).clone()
            else:
                yield batch[0], batch[1].reshape(-1).clone()
