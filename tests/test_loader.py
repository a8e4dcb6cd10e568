import pytest
import torch

from utils import data


@pytest.fixture(scope="module")
def train_split(mnist):
    return mnist[0]


def test_batches_shapes_dtype_and_len(train_split):
    loader = data.DeviceLoader(*train_split, batch_size=128)
    assert len(loader) == 469
    batches = list(loader)
    assert len(batches) == 469
    x, y = batches[0]
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (128,) and y.dtype == torch.int64
    assert batches[-1][0].shape[0] == 60000 - 468 * 128


def test_normalization_matches_mnist_statistics(train_split):
    loader = data.DeviceLoader(*train_split)
    assert loader.x.mean().item() == pytest.approx(0.0, abs=2e-3)
    assert loader.x.std().item() == pytest.approx(1.0, abs=5e-3)


def test_no_augmentation_no_shuffle_is_the_data_itself(train_split):
    images, labels = train_split
    loader = data.DeviceLoader(images, labels, batch_size=1000, shuffle=False, limit=3000)
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    expected = (images[:3000].float() / 255 - data.MEAN) / data.STD
    assert torch.allclose(x.squeeze(1), expected, atol=1e-6)
    assert torch.equal(y, labels[:3000])


def test_zero_knobs_affine_is_identity(train_split):
    x = data.normalize(train_split[0][:16])
    out = data.random_affine(x, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)


def test_augmentation_changes_images_but_keeps_background(train_split):
    x = data.normalize(train_split[0][:64])
    out = data.random_affine(x, torch.Generator().manual_seed(0), rotate=15, translate=0.1, scale=0.1)
    assert out.shape == x.shape
    assert not torch.allclose(out, x, atol=1e-3)
    background = -data.MEAN / data.STD
    assert out[:, :, 0, 0].sub(background).abs().max() < 1e-5  # corners stay background


def _first_batches(seed, n=3, **augment):
    fixed = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (1000, 28, 28), dtype=torch.uint8, generator=fixed)
    labels = torch.arange(1000)
    loader = data.DeviceLoader(images, labels, batch_size=100, seed=seed, **augment)
    out = []
    for _ in range(2):  # two epochs: the order must differ between them too
        out += [b for _, b in zip(range(n), loader)]
    return out


@pytest.mark.parametrize("augment", [{}, {"rotate": 10, "translate": 0.1, "scale": 0.1},
                                     {"rotate": 10, "elastic": 34.0}])
def test_same_seed_same_batches(augment):
    a, b = _first_batches(0, **augment), _first_batches(0, **augment)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = _first_batches(1, **augment)
    assert not torch.equal(a[0][1], c[0][1])
    assert not torch.equal(a[0][1], a[3][1])  # second epoch reshuffles


def test_elastic_blur_is_torchvisions_gaussian():
    from torchvision.transforms.v2.functional import gaussian_blur

    noise = data.draw_elastic(8, (28, 28), torch.Generator().manual_seed(0))
    field = data.elastic_field(noise, alpha=1.0, sigma=4.0)
    assert field.shape == (8, 28, 28, 2)
    expected = gaussian_blur(noise, [33, 33], [4.0, 4.0]).permute(0, 2, 3, 1)
    assert torch.allclose(field, expected, atol=1e-6)
    assert torch.equal(data.elastic_field(noise, alpha=34.0, sigma=4.0), 34.0 * field)


def test_elastic_field_of_each_image_depends_on_its_noise_alone():
    noise = data.draw_elastic(6, (28, 28), torch.Generator().manual_seed(1))
    together = data.elastic_field(noise, 34.0, 4.0)
    assert torch.equal(together[2:3], data.elastic_field(noise[2:3], 34.0, 4.0))
    flat = torch.full((1, 2, 28, 28), 0.5)  # a constant field stays constant: the kernel sums to 1
    assert torch.allclose(data.elastic_field(flat, 2.0, 4.0), torch.ones(1, 28, 28, 2))


def test_elastic_distortion_moves_pixels_and_zero_moves_none(train_split):
    x = data.normalize(train_split[0][:32])
    u = data.draw_affine(32, torch.Generator().manual_seed(0))
    plain = data.warp(x, u, rotate=10)
    assert torch.equal(data.warp(x, u, rotate=10, displacement=torch.zeros(32, 28, 28, 2)), plain)
    noise = data.draw_elastic(32, (28, 28), torch.Generator().manual_seed(0))
    bent = data.warp(x, u, rotate=10, displacement=data.elastic_field(noise, 34.0, 4.0))
    assert not torch.allclose(bent, plain, atol=1e-3)
    assert (bent - plain).abs().amax(dim=(1, 2, 3)).min() > 0.1  # every image is bent
    # a field shifting every pixel's source one pixel right is the image moved one pixel left
    shift = torch.zeros(32, 28, 28, 2)
    shift[..., 0] = 1.0
    moved = data.warp(x, torch.zeros(32, 4), displacement=shift)
    assert torch.allclose(moved[..., :-1], x[..., 1:], atol=1e-5)


def test_elastic_off_draws_nothing_more(train_split):
    images, labels = train_split[0][:200], train_split[1][:200]
    plain = data.DeviceLoader(images, labels, batch_size=50, seed=3, rotate=10)
    off = data.DeviceLoader(images, labels, batch_size=50, seed=3, rotate=10, elastic=0.0, elastic_sigma=2.0)
    on = data.DeviceLoader(images, labels, batch_size=50, seed=3, rotate=10, elastic=34.0)
    for (xa, ya), (xb, yb), (xc, yc) in zip(plain, off, on):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(ya, yc) and not torch.equal(xa, xc)  # the order is drawn before any warp


def test_bad_loader_input_is_a_value_error(train_split):
    with pytest.raises(ValueError, match="batch_size"):
        data.DeviceLoader(*train_split, batch_size=0)
    with pytest.raises(ValueError, match="elastic must be a finite number of pixels >= 0"):
        data.DeviceLoader(*train_split, elastic=-1.0)
    with pytest.raises(ValueError, match="elastic_sigma must be a finite number of pixels above 0"):
        data.DeviceLoader(*train_split, elastic_sigma=float("nan"))
    with pytest.raises(ValueError, match="needs a blur wider"):
        data.elastic_field(torch.zeros(1, 2, 28, 28), 34.0, 7.0)
    with pytest.raises(ValueError, match="labels"):
        data.DeviceLoader(train_split[0][:10], train_split[1][:9])


def test_classic_loader_yields_normalized_batches(data_dir):
    loader = data.classic_loader(data_dir, train=False, batch_size=64, num_workers=0)
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,)
    fast = data.DeviceLoader(*data.load_mnist(data_dir, train=False), batch_size=64, shuffle=False)
    assert torch.allclose(x, next(iter(fast))[0], atol=1e-5)


def _passes(clean_from, epochs=4, **kwargs):
    """Every batch of ``epochs`` passes, each told its epoch as ``fit`` does."""
    fixed = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (300, 28, 28), dtype=torch.uint8, generator=fixed)
    loader = data.DeviceLoader(images, torch.arange(300), batch_size=100, seed=3, rotate=10, translate=0.05,
                               scale=0.05, clean_from=clean_from, **kwargs)
    out = []
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        out.append(list(loader))
    return loader, out


def test_clean_tail_yields_the_original_digits():
    loader, passes = _passes(clean_from=3)
    for epoch, batches in enumerate(passes, 1):
        for x, y in batches:
            original = loader.x[y]  # labels are the image indices here
            assert torch.equal(x, original) == (epoch >= 3), f"epoch {epoch}"


def test_epochs_before_the_clean_tail_are_unchanged():
    _, always = _passes(clean_from=None)
    _, tail = _passes(clean_from=3)
    for epoch in (0, 1):
        for (xa, ya), (xb, yb) in zip(always[epoch], tail[epoch]):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the loader never told its epoch (a peek, a plot) augments as before
    loader = data.DeviceLoader(torch.zeros(10, 28, 28, dtype=torch.uint8), torch.arange(10), rotate=5,
                               clean_from=1)
    assert loader.augmenting


def test_classic_loader_follows_the_clean_tail(data_dir):
    loader = data.classic_loader(data_dir, train=True, batch_size=16, rotate=15, translate=0.1, num_workers=0,
                                 clean_from=2)
    plain = data.classic_loader(data_dir, train=True, batch_size=16, rotate=0, num_workers=0)
    first = lambda ld: ld.dataset[0][0]  # noqa: E731 - image 0 through the loader's current transform
    loader.set_epoch(1)
    assert not torch.allclose(first(loader), first(plain), atol=1e-4)
    loader.set_epoch(2)
    assert torch.equal(first(loader), first(plain))
    x, _ = next(iter(loader))  # and through the DataLoader, workers included
    assert x.shape == (16, 1, 28, 28)
