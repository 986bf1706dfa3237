"""The embedded benchmark: procedurally generated scenes with a built-in teacher/student gap.

Every image is drawn from ``np.random.default_rng([seed, crc32(split), index])``, so any
image can be regenerated on its own and the dataset does not depend on worker count or
order. ``ensure_embedded`` writes it once per parameter set, as PNGs in the layout
``SegmentationFolder`` reads, into its own subdirectory of a cache directory that kdlab marks
as its own (see "writing the dataset" below), and from then on only reads it.

Classes (index, name: what it looks like, and why it is there)

0 ``grass``  large green "stuff" background; the easy class.
1 ``road``   a band 28-40 px wide crossing the image; **same mean colour as water**, told
             apart only by texture (isotropic gravel speckle vs water's oriented waves),
             which needs a patch of several pixels, not one pixel.
2 ``water``  a region behind a wavy shore line; the context for boats.
3 ``car``    rounded rectangle with a darker cabin, lying inside the road and aligned with
             it. **Context class**: pixel for pixel identical to ``boat``.
4 ``boat``   the same drawing as ``car``, lying on water at a random heading. Only the
             surroundings (road or water), up to ~10 px away from interior pixels, say
             which; vehicles sometimes come in side-by-side pairs, which pushes the context
             further away still.
5 ``disk``   a disk 30-50 px across, filled with a checker texture shared with ``box``.
6 ``box``    a rotated square of the same size range and the same fill. **Shape class**:
             interior pixels of a disk and a box look the same; only a receptive field that
             reaches the outline (corners vs. curvature, up to 25 px away) tells them apart.
7 ``pole``   dark, nearly vertical line segments 1-3 px wide: thin structures.
8 ``sign``   3-7 px squares (< 0.5 % of a 128 px image): small objects, half of them on
             top of a pole.

Ignore (255): a 2 px "void" ring around some things (as in Pascal VOC) and, in some
images, a noise patch that hides whatever is below it. Things are drawn in random depth
order so they occlude each other; poles and signs come last. Photometric noise: per-image
contrast and brightness jitter, an optional 3x3 blur and Gaussian pixel noise.

A compact student with a small receptive field can learn grass, poles, signs and most of
road/water, but not car vs boat or disk vs box away from their borders; a large network
can, which is where the teacher/student gap comes from.
"""

import math
import os
import re
import shutil
import zlib
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from tqdm import tqdm

from kdlab.errors import DataError
from kdlab.morphology import dilate, erode

try:
    import fcntl
except ImportError:  # not on Windows: generators of one root must then not run at once
    fcntl = None

CLASS_NAMES = ("grass", "road", "water", "car", "boat", "disk", "box", "pole", "sign")
PALETTE = [
    (60, 160, 60),
    (128, 64, 128),
    (30, 110, 220),
    (220, 20, 60),
    (255, 160, 30),
    (0, 200, 200),
    (150, 80, 220),
    (250, 250, 0),
    (255, 255, 255),
]
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_INDEX = 255
GRASS, ROAD, WATER, CAR, BOAT, DISK, BOX, POLE, SIGN = range(NUM_CLASSES)

# Bump when the drawing changes, so cached datasets of an older look are regenerated.
GENERATOR_VERSION = 1
SPLITS = ("train", "val")

VEHICLE_COLOURS = ((200, 45, 40), (225, 195, 50), (230, 230, 225), (50, 70, 165), (90, 160, 90))
CHECKER_COLOURS = (((215, 125, 45), (115, 65, 150)), ((60, 170, 170), (175, 60, 90)))
SIGN_COLOURS = ((250, 215, 20), (20, 215, 230), (240, 60, 200))


@lru_cache(maxsize=4)
def _pixel_grid(size):
    """Row and column coordinates of every pixel (float32, size x size each)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _rotated_coords(size, cy, cx, angle):
    """Pixel coordinates in a frame centred on (cy, cx): u along ``angle``, v across it."""
    yy, xx = _pixel_grid(size)
    dy, dx = yy - cy, xx - cx
    cos, sin = math.cos(angle), math.sin(angle)
    return dx * cos + dy * sin, -dx * sin + dy * cos


def _dilate(mask, steps=1):
    """Binary dilation with a 3x3 square, ``steps`` times: one (2·steps+1)² square max filter
    (``kdlab.morphology``); outside the image counts as False."""
    return dilate(torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)), 2 * steps + 1).numpy()


def _erode(mask, steps=1):
    """Binary erosion, the complement of ``_dilate`` of the complement (outside counts as True)."""
    return erode(torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)), 2 * steps + 1).numpy()


def _jitter(rng, colour, amount):
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


class _Canvas:
    """The image (float RGB) and label map being drawn, with a paint operation."""

    def __init__(self, size):
        self.size = size
        self.image = np.zeros((size, size, 3), np.float32)
        self.label = np.zeros((size, size), np.uint8)

    def paint(self, mask, texture, cls):
        """Cover ``mask`` with ``texture`` (H x W x 3 array or RGB triple) labelled ``cls``."""
        self.image[mask] = texture[mask] if np.ndim(texture) == 3 else texture
        self.label[mask] = cls


# --- stuff: grass, water, road ---------------------------------------------------------

def _draw_stuff(rng, canvas):
    """Grass everywhere, then water behind a wavy shore, then a road band over both.

    Returns the road direction (radians) or None when the image has no road.
    """
    size = canvas.size
    yy, xx = _pixel_grid(size)
    grass = _jitter(rng, (75, 135, 60), 20) + rng.normal(0, 7, (size, size, 1)).astype(np.float32)
    canvas.paint(np.ones((size, size), bool), grass, GRASS)

    # Road and water share one mean colour: only their texture differs.
    grey = _jitter(rng, (115, 118, 125), 25)
    if rng.random() < 0.9:
        across, along = _rotated_coords(size, size / 2, size / 2, rng.uniform(0, 2 * math.pi))
        wave_len = rng.uniform(0.3, 0.6) * size
        shore = across + rng.uniform(3, 8) * np.sin(2 * math.pi * along / wave_len + rng.uniform(0, 6.3))
        water = shore > rng.uniform(-0.15, 0.3) * size
        ripple_len = rng.uniform(5, 8)
        ripple_dir = rng.uniform(0, math.pi)
        phase = (xx * math.cos(ripple_dir) + yy * math.sin(ripple_dir)) * 2 * math.pi / ripple_len
        ripples = 14 * np.sin(phase)[..., None]
        canvas.paint(water, grey + ripples, WATER)

    if rng.random() < 0.1:
        return None
    road_dir = rng.uniform(0, math.pi)
    centre = rng.uniform(0.3, 0.7, 2) * size
    _, across = _rotated_coords(size, centre[0], centre[1], road_dir)
    road = np.abs(across) <= rng.uniform(14, 20) * size / 128
    gravel = rng.normal(0, 16, (size, size, 1)).astype(np.float32)
    canvas.paint(road, grey + gravel, ROAD)
    return road_dir


# --- things: vehicles (car/boat) and shapes (disk/box) ---------------------------------

def _vehicle_mask(size, cy, cx, angle, length, width):
    """A rounded rectangle (superellipse of power 4) and its cabin, a smaller rectangle."""
    u, v = _rotated_coords(size, cy, cx, angle)
    body = (np.abs(u) / (length / 2)) ** 4 + (np.abs(v) / (width / 2)) ** 4 <= 1
    cabin = body & (np.abs(u) <= 0.22 * length) & (np.abs(v) <= 0.32 * width)
    return body, cabin


def _vehicle_inside(size, host, cy, cx, angle, length, width):
    """The vehicle plan at (cy, cx), or None unless 97 % of its pixels lie inside ``host``."""
    body, cabin = _vehicle_mask(size, cy, cx, angle, length, width)
    area = body.sum()
    return (body, cabin) if area and (body & host).sum() >= 0.97 * area else None


def _place_vehicles(rng, size, host, cls, road_dir):
    """Plan up to three vehicles of class ``cls`` lying inside ``host``.

    Cars follow the road direction; boats take any heading. Half the time a second vehicle
    is parked alongside the first, making a wide patch of vehicle texture.
    """
    plans = []
    host_pixels = np.flatnonzero(host)
    if host_pixels.size == 0:
        return plans
    scale = size / 128
    for _ in range(rng.integers(1, 4)):
        length, width = rng.uniform(18, 34) * scale, rng.uniform(10, 15) * scale
        for _attempt in range(12):
            cy, cx = np.divmod(rng.choice(host_pixels), size)
            angle = road_dir + rng.normal(0, 0.08) if cls == CAR else rng.uniform(0, 2 * math.pi)
            vehicle = _vehicle_inside(size, host, cy, cx, angle, length, width)
            if vehicle:
                break
        if vehicle is None:
            continue
        plans.append((cls, *vehicle))
        if rng.random() < 0.5:
            side = (width + 1) * rng.choice((-1, 1))
            neighbour = _vehicle_inside(size, host, cy + side * math.cos(angle),
                                        cx - side * math.sin(angle), angle, length, width)
            if neighbour:
                plans.append((cls, *neighbour))
    return plans


def _place_shapes(rng, size):
    """Plan one to three disks or boxes 30-50 px across anywhere in the image."""
    plans = []
    for _ in range(rng.integers(1, 4)):
        extent = rng.uniform(30, 50) * size / 128
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        if rng.random() < 0.5:
            yy, xx = _pixel_grid(size)
            plans.append((DISK, (yy - cy) ** 2 + (xx - cx) ** 2 <= (extent / 2) ** 2, None))
        else:
            u, v = _rotated_coords(size, cy, cx, rng.uniform(0, math.pi / 2))
            plans.append((BOX, (np.abs(u) <= extent / 2) & (np.abs(v) <= extent / 2), None))
    return plans


def _draw_things(rng, canvas, road_dir):
    """Vehicles and shapes in random depth order, some with a void ring."""
    size = canvas.size
    vehicles = []
    if road_dir is not None:
        vehicles += _place_vehicles(rng, size, canvas.label == ROAD, CAR, road_dir)
    vehicles += _place_vehicles(rng, size, canvas.label == WATER, BOAT, road_dir)
    things = vehicles + _place_shapes(rng, size)

    yy, xx = _pixel_grid(size)
    checker_a, checker_b = CHECKER_COLOURS[rng.integers(len(CHECKER_COLOURS))]
    odd_cell = ((yy // 4 + xx // 4) % 2 == 1)[..., None]
    checker = np.where(odd_cell, _jitter(rng, checker_a, 15), _jitter(rng, checker_b, 15))

    for order in rng.permutation(len(things)):
        cls, mask, cabin = things[order]
        if cls in (CAR, BOAT):
            body_colour = _jitter(rng, VEHICLE_COLOURS[rng.integers(len(VEHICLE_COLOURS))], 15)
            canvas.paint(mask, body_colour, cls)
            canvas.paint(cabin, body_colour * 0.45, cls)
        else:
            canvas.paint(mask, checker, cls)
        if rng.random() < 0.5:
            canvas.label[_dilate(mask) & ~_erode(mask)] = IGNORE_INDEX


# --- thin and small things, ignore patches, photometric noise --------------------------

def _segment_mask(size, start, end, width):
    """Pixels within ``width / 2`` of the segment from ``start`` to ``end`` (row, col)."""
    yy, xx = _pixel_grid(size)
    (y0, x0), (y1, x1) = start, end
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
    return (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2 <= (width / 2) ** 2


def _draw_poles_and_signs(rng, canvas):
    """Nearly vertical poles 1-3 px wide, then small square signs (some on pole tops)."""
    size = canvas.size
    pole_tops = []
    for _ in range(rng.integers(1, 4)):
        foot = np.array([rng.uniform(0.3, 1.0), rng.uniform(0.05, 0.95)]) * size
        length = rng.uniform(25, 90) * size / 128
        tilt = rng.normal(0, 0.2)
        top = foot - length * np.array([math.cos(tilt), math.sin(tilt)])
        width = rng.choice((1.0, 2.0, 3.0))
        canvas.paint(_segment_mask(size, foot, top, width), _jitter(rng, (45, 40, 40), 15), POLE)
        pole_tops.append(top)

    max_side = max(3, min(7, int(math.sqrt(0.0045) * size)))
    yy, xx = _pixel_grid(size)
    for _ in range(rng.integers(2, 6)):
        side = int(rng.integers(3, max_side + 1))
        if pole_tops and rng.random() < 0.5:
            cy, cx = pole_tops.pop()
        else:
            cy, cx = rng.uniform(0.05, 0.95, 2) * size
        y0, x0 = round(cy - side / 2), round(cx - side / 2)
        square = (yy >= y0) & (yy < y0 + side) & (xx >= x0) & (xx < x0 + side)
        canvas.paint(square, _jitter(rng, SIGN_COLOURS[rng.integers(len(SIGN_COLOURS))], 10), SIGN)


def _draw_ignore_patch(rng, canvas):
    """Sometimes hide a rectangle under salt-and-pepper noise and label it ignore."""
    if rng.random() >= 0.35:
        return
    size = canvas.size
    h, w = rng.uniform(6, 16, 2) * size / 128
    y0, x0 = rng.uniform(0, size - h), rng.uniform(0, size - w)
    yy, xx = _pixel_grid(size)
    patch = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
    noise = rng.integers(0, 2, (size, size, 1)).astype(np.float32) * 255
    canvas.paint(patch, noise, IGNORE_INDEX)


def _photometric_noise(rng, image):
    """Contrast and brightness jitter, an optional 3x3 binomial blur, Gaussian noise."""
    image = (image - 128) * rng.uniform(0.75, 1.25) + 128 + rng.uniform(-20, 20)
    if rng.random() < 0.3:
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
        h, w = image.shape[:2]
        kernel = np.outer([1, 2, 1], [1, 2, 1]) / 16
        image = sum(kernel[dy, dx] * padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    image = image + rng.normal(0, rng.uniform(2, 8), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_scene(rng, size=128):
    """Draw one scene: returns (image uint8 size x size x 3, label uint8 size x size)."""
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    canvas = _Canvas(int(size))
    road_dir = _draw_stuff(rng, canvas)
    _draw_things(rng, canvas, road_dir)
    _draw_poles_and_signs(rng, canvas)
    _draw_ignore_patch(rng, canvas)
    return _photometric_noise(rng, canvas.image), canvas.label


def scene_rng(seed, split, index):
    """The generator of image ``index`` of ``split``: independent of every other image."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


# --- writing the dataset ---------------------------------------------------------------
#
# ``data.root`` of the embedded benchmark is a cache directory that kdlab owns, told by its
# marker file ``.kdlab-embedded``. Each parameter set has its own complete copy in a
# subdirectory (``copy_name``), written to ``<copy>.tmp-<pid>`` and renamed into place, so
# different parameters coexist and a copy, once there, is never replaced or deleted: a job
# reading it can never lose its files. Generators of one root take turns (a file lock); one
# that waited finds the copy done. kdlab writes nothing into a directory it did not create:
# a non-empty ``data.root`` without the marker is an error, unless it is a cache of the old
# layout (one copy directly in the root, its ``dataset.yaml`` written by this generator),
# which stays where it is, is used as-is for its own parameters, and gets the marker so that
# other parameter sets can be added next to it.

MARKER = ".kdlab-embedded"
LOCK = ".kdlab-embedded.lock"
_LEGACY_ENTRIES = {"dataset.yaml", "train", "val"}
_TMP_NAME = re.compile(r"^(?P<copy>.+)\.tmp-(?P<pid>\d+)$")


def _generator_params(seed, image_size, num_train, num_val):
    for name, value, minimum in (("image_size", image_size, 32), ("num_train", num_train, 0),
                                 ("num_val", num_val, 0), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return {"seed": int(seed), "image_size": int(image_size), "num_train": int(num_train),
            "num_val": int(num_val), "version": GENERATOR_VERSION}


def copy_name(params):
    """The subdirectory of the cache holding the copy generated with ``params``."""
    return (f"seed{params['seed']}-{params['image_size']}px-{params['num_train']}x{params['num_val']}"
            f"-v{params['version']}")


def _dataset_yaml(params):
    return {
        "name": "embedded",
        "num_classes": NUM_CLASSES,
        "class_names": list(CLASS_NAMES),
        "palette": [list(colour) for colour in PALETTE],
        "ignore_index": IGNORE_INDEX,
        "generator": params,
    }


def _generator_of(directory):
    """The generator parameters in ``directory/dataset.yaml`` if this generator wrote it, else None."""
    try:
        meta = yaml.safe_load((Path(directory) / "dataset.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("name") != "embedded":
        return None
    generator = meta.get("generator")
    keys = {"seed", "image_size", "num_train", "num_val", "version"}
    if not isinstance(generator, dict) or set(generator) != keys:
        return None
    expected = _dataset_yaml(generator)
    return generator if all(meta.get(k) == v for k, v in expected.items()) else None


def _is_legacy_copy(root):
    """A cache of the old layout: the generator's dataset.yaml and its splits, nothing else."""
    if _generator_of(root) is None or {p.name for p in root.iterdir()} - _LEGACY_ENTRIES:
        return False
    return all(not (root / split).exists() or {p.name for p in (root / split).iterdir()} <= {"images", "labels"}
               for split in SPLITS)


def _not_ours(root, why):
    return DataError(f"data.root '{root}' {why} and is not a kdlab-generated embedded benchmark (no {MARKER} "
                     f"marker), so kdlab will not write there; for a dataset of your own set data.name=folder")


def _claim(root):
    """Check that kdlab may write into ``root`` and mark it as its own; nothing is written otherwise.

    Allowed: a missing or empty directory, a marked one, or an old-layout cache.
    """
    if root.is_symlink() and not root.exists():
        raise _not_ours(root, "is a dangling symbolic link")
    if root.exists() and not root.is_dir():
        raise _not_ours(root, "is a file")
    if (root / MARKER).is_file():
        return
    if root.is_dir() and any(root.iterdir()):
        parent_owned = (root.parent / MARKER).is_file() and _generator_of(root) is not None
        if parent_owned:
            raise DataError(f"data.root '{root}' is one generated copy of the embedded benchmark, with other "
                            f"parameters ({_describe(_generator_of(root))}); set data.root to its parent "
                            f"'{root.parent}', the cache of all copies")
        if not _is_legacy_copy(root):
            raise _not_ours(root, "is not empty")
        legacy = _generator_of(root)
    else:
        legacy = None
    root.mkdir(parents=True, exist_ok=True)
    marker = {"created_by": "kdlab embedded benchmark generator (kdlab.data.synthetic)",
              "layout": 1,
              "copies": "one subdirectory per parameter set: seed<seed>-<size>px-<train>x<val>-v<version>; "
                        "kdlab writes and deletes only inside this directory",
              "legacy_copy": legacy}
    tmp = root / f"{MARKER}.tmp-{os.getpid()}"
    tmp.write_text(yaml.safe_dump(marker, sort_keys=False))
    os.replace(tmp, root / MARKER)


def _describe(params):
    return (f"seed {params['seed']}, {params['image_size']} px, {params['num_train']} train / "
            f"{params['num_val']} val images, generator version {params['version']}")


@contextmanager
def _locked(root):
    """Hold the cache's lock file: one generator at a time per root."""
    with open(root / LOCK, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_alive(pid):
    if pid == os.getpid():
        return False  # a leftover of this process, which is not generating it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _remove_leftovers(root):
    """Delete ``<copy>.tmp-<pid>`` folders of generators that died (the lock is held)."""
    for path in root.iterdir():
        match = _TMP_NAME.match(path.name)
        if not match or path.is_symlink() or _pid_alive(int(match["pid"])):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif match["copy"] == MARKER:
            path.unlink(missing_ok=True)


def _existing_copy(root, params):
    """The ready copy for ``params`` in ``root`` (or ``root`` itself when it is one), else None."""
    if _generator_of(root) == params:  # the root is that copy itself (given directly, or old layout)
        return root
    target = root / copy_name(params)
    if not (root / MARKER).is_file() or not target.exists():
        return None
    if _generator_of(target) != params:
        raise DataError(f"{target}: should hold the embedded benchmark with {_describe(params)}, but its "
                        f"dataset.yaml says otherwise; kdlab will not replace it, remove it to regenerate")
    return target


def generate_embedded(root, seed=0, image_size=128, num_train=2000, num_val=200, progress=True):
    """Generate the benchmark's copy for these parameters inside the cache ``root``; return its Path.

    A copy that is already there is returned, never replaced. The files are written to
    ``<root>/<copy>.tmp-<pid>`` and renamed into place at the end, so an interrupted run
    leaves no half-written copy (its folder is deleted by the next generation).
    """
    params = _generator_params(seed, image_size, num_train, num_val)
    root = Path(root)
    if (found := _existing_copy(root, params) if root.is_dir() else None) is not None:
        return found
    try:
        return _generate_locked(root, params, progress)
    except OSError as err:  # disk full, read-only, no permission: one line naming the place
        raise DataError(f"data.root '{root}': cannot write the embedded benchmark there "
                        f"({err.strerror or err}{': ' + str(err.filename) if err.filename else ''})") from err


def _generate_locked(root, params, progress):
    seed, image_size, num_train, num_val = (params[k] for k in ("seed", "image_size", "num_train", "num_val"))
    _claim(root)
    with _locked(root):
        _remove_leftovers(root)
        if (found := _existing_copy(root, params)) is not None:  # another generator made it meanwhile
            return found
        target = root / copy_name(params)
        tmp = root / f"{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with tqdm(total=num_train + num_val, desc=f"generating {root.name}/{target.name}",
                      disable=not progress) as bar:
                for split, count in zip(SPLITS, (num_train, num_val)):
                    _write_split(tmp / split, seed, split, count, image_size, bar)
            (tmp / "dataset.yaml").write_text(yaml.safe_dump(_dataset_yaml(params), sort_keys=False))
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _write_split(split_dir, seed, split, count, image_size, bar):
    (split_dir / "images").mkdir(parents=True)
    (split_dir / "labels").mkdir(parents=True)
    for index in range(count):
        image, label = render_scene(scene_rng(seed, split, index), image_size)
        Image.fromarray(image).save(split_dir / "images" / f"{index:05d}.png", compress_level=1)
        Image.fromarray(label).save(split_dir / "labels" / f"{index:05d}.png", compress_level=1)
        bar.update()


def ensure_embedded(root, seed=0, image_size=128, num_train=2000, num_val=200, progress=True):
    """The directory holding the benchmark generated with these parameters, inside the cache ``root``.

    It is generated on first use (``generate_embedded``); once there it is only read. ``root``
    must be missing, empty, a cache kdlab made, or one copy itself (then it is returned as-is
    when its parameters match); anything else is a DataError and nothing is written.
    """
    return generate_embedded(root, seed, image_size, num_train, num_val, progress)
