"""What a quality-matrix run spends loading Fashion-MNIST: per-sample transforms against images
transformed once (data/idx.py), side by side in one process at one thread.

Builds the splits both ways at a matrix image size, checks that every batch holds the same tensors, and
times what one run reads: 360 train batches of 128, three validation passes and one test pass. The
transformed-once side is timed both for a process's first run (it transforms the files) and for a later
run of the same process (a Ray worker's next `compare` task: the images are already in memory).

    .venv/bin/python benchmarks/data_loading.py [--data-dir /usr/share/datasets/fashion-mnist] [--size 14]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from edropout_ray.data import make_loader
from edropout_ray.data import idx
from edropout_ray.data.common import Options, assemble
from edropout_ray.data.transforms import small_image_transforms

TRAIN_STEPS, VALIDATIONS = 360, 3


def per_sample_splits(root: Path, opts: Options):
    """The splits as before: PIL images, the transform applied to each sample when it is read."""
    files = idx.find_files("fashion_mnist", root)
    pool, test = (idx._read_split(files[images], files[labels]) for images, labels in idx.FILES.values())
    train_tf, eval_tf = small_image_transforms("fashion_mnist", opts)
    return assemble(pool, test, train_tf, eval_tf, idx.NUM_CLASSES, opts)


def one_run(splits, batch: int) -> tuple[float, list[torch.Tensor]]:
    """Seconds to read a run's batches, and the first train batch and the last test batch (to compare)."""
    started = time.perf_counter()
    train = iter(make_loader(splits.train, batch, shuffle=True, seed=0, drop_last=True))
    seen = []
    for step in range(TRAIN_STEPS):
        try:
            images, _ = next(train)
        except StopIteration:
            train = iter(make_loader(splits.train, batch, shuffle=True, seed=step, drop_last=True))
            images, _ = next(train)
        if step == 0:
            seen.append(images)
    for split in [splits.val] * VALIDATIONS + [splits.test]:
        for images, _ in make_loader(split, batch, shuffle=False):
            pass
    seen.append(images)
    return time.perf_counter() - started, seen


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--size", type=int, default=14)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.data_dir)
    opts = Options(size=args.size, channels=1, seed=0, val_fraction=0.1, augment=True)

    before, expected = one_run(per_sample_splits(root, opts), args.batch)
    idx._transformed_splits.cache_clear()
    started = time.perf_counter()
    first_splits = idx.load_mnist_like("fashion_mnist", root, opts)
    transform = time.perf_counter() - started
    first, got = one_run(first_splits, args.batch)
    started = time.perf_counter()
    later_splits = idx.load_mnist_like("fashion_mnist", root, opts)
    reload = time.perf_counter() - started
    later, _ = one_run(later_splits, args.batch)
    if not all(torch.equal(a, b) for a, b in zip(expected, got)):
        raise SystemExit("the batches differ: the transformed-once images are not the per-sample ones")
    print(f"Fashion-MNIST at {args.size} px, batch {args.batch}: one run's reads ({TRAIN_STEPS} train batches, "
          f"{VALIDATIONS} validation passes, the test set), one thread")
    rows = [("per-sample transforms", before, ""),
            ("transformed once, a process's first run", transform + first, f" ({transform:.2f} s transforming)"),
            ("transformed once, a later run", reload + later, "")]
    for label, seconds, note in rows:
        print(f"{label:<42}{seconds:6.2f} s  {seconds / before:.2f}x{note}")


if __name__ == "__main__":
    main()
