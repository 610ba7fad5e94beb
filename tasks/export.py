"""Render slices of a scan into square images and write them to disk.

Each selected slice arrives as a 2D float32 array of the scan's normalised
intensities in [0, 1] and the 2D boolean slice through the scan's 3D mask.
:func:`render_slice` refines the mask, blanks everything outside it and scales
the object into a square image. :func:`encode_image` turns that image into PNG
or NPY bytes, and :func:`write_atomic` stores them under a path built by
:func:`image_name` and :func:`image_path`.
"""

from __future__ import annotations

import functools
import io
import math
import os
import tempfile
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from skimage.morphology import disk

FORMATS = ("png", "png16", "npy")
FILE_SUFFIX = {"png": ".png", "png16": ".png", "npy": ".npy"}

# zlib level 1, the fastest level that still compresses, and the Sub filter
# on every row. OpenCV's default chooses a filter per row: on slice images
# that encodes about 1.6 times slower than Sub alone, for files about 5%
# smaller. Both are fixed so the same image always gives the same
# bytes and an unchanged file is skipped.
PNG_COMPRESSION = 1
PNG_FILTER = cv2.IMWRITE_PNG_FILTER_SUB

# Part of every image's export key. Change it whenever the same slice and
# settings would give other bytes, so the next build rewrites every image.
EXPORT_CODE_VERSION = "export-2"

# Windows rejects these in file names, and a space breaks unquoted shell use.
_REPLACED_CHARACTERS = frozenset('<>:"|?* ')
_MAX_NAME_BYTES = 255  # file-name limit of ext4 and XFS


@dataclass(frozen=True)
class RenderParams:
    """Settings for turning one slice and its mask into a square image.

    Attributes
    ----------
    image_size : int
        Side of the output image, in pixels.
    margin_fraction : float
        Margin around the refined mask's bounding box, as a fraction of the
        box's longer side. At least 1 pixel is kept.
    min_object_size : int
        Area in pixels below which a 2D object of the mask is removed.
    max_hole_size : int
        Area in pixels up to which a hole in the mask is filled.
    closing_radius : int
        Radius in pixels of the disk used for the morphological closing.
        0 skips the closing.
    min_area_fraction : float
        Smallest refined mask area, as a fraction of the slice area, that is
        kept. Smaller objects are dropped.
    """

    image_size: int = 224
    margin_fraction: float = 0.05
    min_object_size: int = 16
    max_hole_size: int = 16
    closing_radius: int = 1
    min_area_fraction: float = 0.02

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be at least 1 pixel, got {self.image_size}")
        if self.margin_fraction < 0:
            raise ValueError(f"margin_fraction must be 0 or more, got {self.margin_fraction}")
        for field in ("min_object_size", "max_hole_size", "closing_radius"):
            value = getattr(self, field)
            if value < 0:
                raise ValueError(f"{field} must be 0 or more pixels, got {value}")
        if not 0 <= self.min_area_fraction <= 1:
            raise ValueError(f"min_area_fraction must lie in [0, 1], got {self.min_area_fraction}")


@dataclass(frozen=True)
class Rendered:
    """Result of rendering one slice.

    Attributes
    ----------
    image : numpy.ndarray or None
        float32 array of shape (image_size, image_size) with values in
        [0, 1] and exactly 0 outside the object. None when the slice is dropped.
    reason : str or None
        Why the slice was dropped. None when it was kept.
    mask_bbox : tuple of int or None
        (row0, row1, col0, col1) of the refined mask in the input slice, as
        half-open ranges like Python slices. None when the refined mask is empty.
    area_fraction : float
        Refined mask area divided by the slice area.
    """

    image: np.ndarray | None
    reason: str | None
    mask_bbox: tuple[int, int, int, int] | None
    area_fraction: float


# ---------------------------------------------------------------- mask refinement


@lru_cache(maxsize=8)
def _disk_footprint(radius: int) -> np.ndarray:
    return disk(radius).astype(np.uint8)


def _holes(mask: np.ndarray) -> np.ndarray:
    """Return the holes of `mask` (uint8 0/1): background that cannot reach the slice edge.

    Background is flood-filled from outside with 4-connectivity, the dual of
    the 8-connectivity used for objects, so a diagonal gap in a wall does not
    open a hole to the outside.
    """
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(padded, None, (0, 0), 1, flags=4)
    return padded[1:-1, 1:-1] == 0


def _keep_labels(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    # np.take is about twice as fast as keep[labels] on int32 label images.
    return np.take(keep, labels).view(np.uint8)


def _remove_small_objects(mask: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """Return the mask without objects smaller than `min_size`, and the number of objects kept."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False
    object_count = int(np.count_nonzero(keep))
    cleaned = mask if object_count == len(keep) - 1 else _keep_labels(labels, keep)
    return cleaned, object_count


def _fill_small_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    holes = _holes(mask).view(np.uint8)
    if not holes.any():
        return mask
    _, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
    fill = stats[:, cv2.CC_STAT_AREA] <= max_size
    fill[0] = False  # label 0 is everything that is not a hole
    return mask | _keep_labels(labels, fill)


def _keep_largest_object(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component and every component inside its holes.

    The inner whorls of a coiled shell are often separate 2D components lying
    in the chambers of the outer wall. Dropping them would punch large holes
    into the fossil, so "largest component" here means the largest outline
    together with everything it encloses.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 2:
        return mask
    largest = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).view(np.uint8)
    inside = _holes(largest).view(np.uint8)
    return largest | (inside & mask)


def refine_mask(mask: np.ndarray, params: RenderParams) -> np.ndarray:
    """Clean a 2D slice mask and keep its largest object.

    The steps are: remove 8-connected objects smaller than
    ``params.min_object_size``, close with a disk of ``params.closing_radius``,
    fill holes of at most ``params.max_hole_size``, then keep the largest
    object together with the objects enclosed by it. Closing comes before hole
    filling so that the small holes it leaves behind are filled too.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean (or 0/non-zero) array of shape (rows, cols).
    params : RenderParams
        Sizes in pixels for each step.

    Returns
    -------
    numpy.ndarray
        Boolean array of shape (rows, cols). All false when nothing survives.

    Raises
    ------
    ValueError
        If `mask` is not 2D.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2D slice, got shape {mask.shape}")
    refined = np.ascontiguousarray(mask != 0).view(np.uint8)
    if refined.size == 0 or not refined.any():
        return refined.view(bool)

    objects = None
    if params.min_object_size > 1:
        refined, objects = _remove_small_objects(refined, params.min_object_size)
    if params.closing_radius > 0:
        # cv2 pads dilation with 0 and erosion with 1, so the closing only adds
        # pixels and an object touching the slice edge is not eaten away.
        footprint = _disk_footprint(params.closing_radius)
        refined = cv2.morphologyEx(refined, cv2.MORPH_CLOSE, footprint)
    if params.max_hole_size > 0:
        refined = _fill_small_holes(refined, params.max_hole_size)
    # Closing and hole filling only add pixels, so they can join objects but
    # never split one. A single object left after the removal stays single.
    if objects is not None and objects <= 1:
        return refined.view(bool)
    return _keep_largest_object(refined).view(bool)


# ---------------------------------------------------------------- rendering


def _dropped(reason: str, bbox: tuple[int, int, int, int] | None, area_fraction: float) -> Rendered:
    return Rendered(image=None, reason=reason, mask_bbox=bbox, area_fraction=area_fraction)


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    x, y, width, height = cv2.boundingRect(mask.view(np.uint8))
    return y, y + height, x, x + width


def _square_canvas(
    image: np.ndarray, mask: np.ndarray, bbox: tuple[int, int, int, int], margin_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Place the masked bounding-box crop in the centre of a zero square.

    The side is the box's longer side plus the margin on both ends. Only the
    box itself is copied, because every pixel outside the refined mask is 0
    anyway, so clipping the margin to the slice edge changes nothing.
    """
    row0, row1, col0, col1 = bbox
    height, width = row1 - row0, col1 - col0
    margin = max(1, round(margin_fraction * max(height, width)))
    side = max(height, width) + 2 * margin
    top = (side - height) // 2
    left = (side - width) // 2

    crop_mask = mask[row0:row1, col0:col1]
    crop = np.clip(image[row0:row1, col0:col1].astype(np.float32, copy=False), 0.0, 1.0)
    crop = np.where(crop_mask, crop, np.float32(0.0))
    cv2.patchNaNs(crop, 0.0)

    canvas = np.zeros((side, side), dtype=np.float32)
    canvas_mask = np.zeros((side, side), dtype=np.float32)
    canvas[top : top + height, left : left + width] = crop
    canvas_mask[top : top + height, left : left + width] = crop_mask
    return canvas, canvas_mask


def _resize_square(canvas: np.ndarray, canvas_mask: np.ndarray, size: int) -> np.ndarray:
    """Resize the masked square to size x size, keeping exactly 0 outside the object.

    Image and mask are resized with the same filter and divided, so each
    output pixel is the weighted mean of the object pixels under it. This
    avoids both a halo outside the object and a dark rim inside it, which
    interpolating against the zero background would give. When shrinking
    (area filter), an output pixel belongs to the object when any object pixel
    falls in its area, so walls thinner than an output pixel are kept. When
    enlarging (bilinear filter), it belongs to the object when its mask weight
    is at least 0.5.
    """
    side = canvas.shape[0]
    if side == size:
        return canvas
    shrinking = side > size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(canvas, (size, size), interpolation=interpolation)
    weights = cv2.resize(canvas_mask, (size, size), interpolation=interpolation)
    inside = weights > 0 if shrinking else weights >= 0.5
    image = np.zeros_like(resized)
    np.divide(resized, weights, out=image, where=inside)
    # The mean of values in [0, 1] may overshoot 1 by a rounding error.
    return np.clip(image, 0.0, 1.0, out=image)


def _is_blank_at_8_bits(image: np.ndarray) -> bool:
    # np.rint rounds half to even, as encode_image does, so 0.5 / 255 maps to 0.
    return image.size == 0 or float(np.rint(image.max() * 255)) <= 0


def render_slice(image: np.ndarray, mask: np.ndarray, params: RenderParams = RenderParams()) -> Rendered:
    """Render one slice as a square image of the object on a zero background.

    Refine the mask, set pixels outside it to exactly 0 and crop to the
    mask's bounding box plus margin. Pad the crop to a square with 0, keeping
    the aspect ratio and the object centred. Resize it to ``params.image_size``
    with area interpolation when shrinking and bilinear when enlarging. Pixels
    outside the resized mask are exactly 0.

    Parameters
    ----------
    image : numpy.ndarray
        Normalised intensities in [0, 1], shape (rows, cols). NaN is read as 0
        and values outside [0, 1] are clipped.
    mask : numpy.ndarray
        Boolean slice of the scan's mask, same shape as `image`.
    params : RenderParams
        Refinement, margin and output size.

    Returns
    -------
    Rendered
        The image, or None with the reason when the slice is dropped: the slice
        has no pixels, the refined mask is empty, the refined mask covers less
        than ``params.min_area_fraction`` of the slice, or the object is black
        at 8-bit precision. An all-zero image is never returned.

    Raises
    ------
    ValueError
        If `image` is not 2D or `mask` has another shape.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be a 2D slice, got shape {image.shape}")
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} must equal image shape {image.shape}")
    if image.size == 0:
        return _dropped("slice has no pixels", None, 0.0)

    refined = refine_mask(mask, params)
    area = int(np.count_nonzero(refined))
    if area == 0:
        return _dropped("refined mask is empty", None, 0.0)

    bbox = _bounding_box(refined)
    area_fraction = area / refined.size
    if area_fraction < params.min_area_fraction:
        # Rounded down so that 1.99% does not read as "2.0%, below 2%".
        percent = math.floor(area_fraction * 1000) / 10
        reason = f"refined mask covers {percent:.1f}% of the slice, below {params.min_area_fraction * 100:g}%"
        return _dropped(reason, bbox, area_fraction)

    canvas, canvas_mask = _square_canvas(image, refined, bbox, params.margin_fraction)
    rendered = _resize_square(canvas, canvas_mask, params.image_size)
    if _is_blank_at_8_bits(rendered):
        return _dropped("object is black: every pixel rounds to 0 at 8 bits", bbox, area_fraction)
    return Rendered(image=rendered, reason=None, mask_bbox=bbox, area_fraction=area_fraction)


# ---------------------------------------------------------------- encoding


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}: use one of {', '.join(FORMATS)}")


def _encode_png(pixels: np.ndarray) -> bytes:
    options = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION, cv2.IMWRITE_PNG_FILTER, PNG_FILTER]
    ok, buffer = cv2.imencode(".png", pixels, options)
    if not ok:
        raise RuntimeError(f"cv2.imencode failed to encode a {pixels.dtype} image of shape {pixels.shape} as PNG")
    return buffer.tobytes()


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """Encode a rendered image as the bytes of one file.

    Parameters
    ----------
    image : numpy.ndarray
        Values in [0, 1], shape (rows, cols).
    fmt : str
        ``"png"``: 8-bit RGB PNG with three equal channels, round(image * 255).
        ``"png16"``: 16-bit grayscale PNG, round(image * 65535).
        ``"npy"``: the float32 array as written by numpy.save.

    Returns
    -------
    bytes
        The file content. The same image and format always give the same bytes.

    Raises
    ------
    ValueError
        If `fmt` is unknown, `image` is not 2D, contains NaN or values outside
        [0, 1], or is all zero after 8-bit rounding (such images are dropped
        by :func:`render_slice` and must never be written).
    RuntimeError
        If OpenCV fails to encode the PNG.
    """
    _check_format(fmt)
    if image.ndim != 2:
        raise ValueError(f"image must be 2D (rows, cols), got shape {image.shape}")
    if image.size == 0:
        raise ValueError("image has no pixels: drop the slice instead of writing it")
    low, high = float(np.min(image)), float(np.max(image))
    if not (0.0 <= low and high <= 1.0):  # also true for NaN
        raise ValueError(f"image values must lie in [0, 1], got min {low} and max {high}: clip before encoding")
    if _is_blank_at_8_bits(image):
        raise ValueError("image is all zero after 8-bit rounding: drop the slice instead of writing it")

    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, image.astype(np.float32, copy=False), allow_pickle=False)
        return buffer.getvalue()
    if fmt == "png16":
        return _encode_png(np.rint(image * 65535.0).astype(np.uint16))
    gray = np.rint(image * 255.0).astype(np.uint8)
    return _encode_png(cv2.merge((gray, gray, gray)))


def decode_image(data: bytes, fmt: str) -> np.ndarray:
    """Decode file bytes written by :func:`encode_image` into the stored array.

    Returns
    -------
    numpy.ndarray
        ``"png"``: uint8 of shape (rows, cols, 3). ``"png16"``: uint16 of
        shape (rows, cols). ``"npy"``: float32 of shape (rows, cols).

    Raises
    ------
    ValueError
        If `fmt` is unknown or the bytes are not a valid file of that format.
    """
    _check_format(fmt)
    if fmt == "npy":
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, EOFError) as error:
            raise ValueError(f"numpy.load could not read {len(data)} bytes as an npy array: {error}") from error
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ValueError(f"cv2.imdecode could not read {len(data)} bytes as a {fmt} image")
    return pixels


# ---------------------------------------------------------------- writing


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> bool:
    """Write `data` to `path` so readers see the old file or the new one, never a part.

    The bytes go to a temporary file in the same folder, which is flushed with
    fsync (unless `durable` is False) and renamed over `path` with os.replace.
    Missing parent folders are created. The file gets mode 0o644, as a dataset
    is meant to be read by others.

    The rename alone already keeps a killed process from leaving a partial
    file. The fsync adds safety against power loss, at about a millisecond per
    file, so a caller that writes many files can pass ``durable=False`` and
    call ``os.sync()`` once when it is done.

    Returns
    -------
    bool
        False when `path` already contains exactly `data` (nothing is written),
        True when the file was written.

    Raises
    ------
    OSError
        If writing or renaming fails. The temporary file is removed first.
    """
    path = Path(path)
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass

    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return True


# ---------------------------------------------------------------- names and paths


def safe_component(name: str) -> str:
    """Make a species, specimen, scan, view or split name safe as one path component.

    The name is NFC-normalised, so non-ASCII letters are kept in one stable
    form. Characters that Windows rejects (``<>:"|?*``) and spaces become ``_``.

    Raises
    ------
    ValueError
        If `name` is empty, ``.`` or ``..``, or contains ``/``, ``\\``, NUL or
        another control character.
    """
    if not isinstance(name, str):
        raise ValueError(f"name must be a str, got {type(name).__name__} {name!r}")
    return _safe_str_component(name)


@lru_cache(maxsize=65536)
def _safe_str_component(name: str) -> str:
    # A build checks the same few species, specimen and view names for every
    # image, so the results are cached.
    name = unicodedata.normalize("NFC", name)
    if not name:
        raise ValueError("name is empty: give a non-empty species, specimen, scan or view name")
    if name in (".", ".."):
        raise ValueError(f"name {name!r} refers to a folder, not a file: rename it")
    if "/" in name or "\\" in name:
        raise ValueError(f"name {name!r} contains a path separator: rename it without '/' or '\\'")
    if "\x00" in name:
        raise ValueError(f"name {name!r} contains NUL: rename it")
    controls = sorted({c for c in name if unicodedata.category(c) == "Cc"})
    if controls:
        raise ValueError(f"name {name!r} contains control characters {controls}: rename it")
    return "".join("_" if c in _REPLACED_CHARACTERS else c for c in name)


def _scan_prefix(species: str, specimen: str, scan_stem: str) -> str:
    """Return the scan stem, with species and specimen in front unless it already starts with them.

    Files of one species share a folder, so the specimen is needed to keep
    files of two specimens apart when their scans have the same stem.
    """
    # NOTE: two scans of one specimen with the same stem (a.nii.gz and a.tif)
    # still get the same names, so the caller must keep stems unique.
    default = f"{species}_{specimen}"
    if scan_stem == default or scan_stem.startswith(default + "_"):
        return scan_stem
    return f"{default}__{scan_stem}"


def image_name(species: str, specimen: str, scan_stem: str, view: str, slice_index: int, fmt: str) -> str:
    """Build the file name of one slice image.

    For example ``image_name("Bone", "specimen3", "Bone_specimen3_avizo",
    "axis1", 42, "png")`` returns ``"Bone_specimen3_avizo__axis1_0042.png"``.
    The slice index is padded to 4 digits, more when it needs them.

    Parameters
    ----------
    species, specimen, scan_stem, view : str
        Names made safe with :func:`safe_component`.
    slice_index : int
        Index of the slice along the view's axis, 0 or more.
    fmt : str
        One of :data:`FORMATS`. It sets the suffix.

    Raises
    ------
    ValueError
        If a name is unsafe (see :func:`safe_component`), `slice_index` is
        negative or not an int, `fmt` is unknown, or the name exceeds 255 bytes.
    """
    _check_format(fmt)
    if isinstance(slice_index, bool) or not isinstance(slice_index, (int, np.integer)) or slice_index < 0:
        raise ValueError(f"slice_index must be an int of 0 or more, got {slice_index!r}")
    prefix = _scan_prefix(safe_component(species), safe_component(specimen), safe_component(scan_stem))
    name = f"{prefix}__{safe_component(view)}_{int(slice_index):04d}{FILE_SUFFIX[fmt]}"
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        raise ValueError(f"file name {name!r} is longer than {_MAX_NAME_BYTES} bytes: shorten the scan or species name")
    return name


def image_path(out_dir: Path, split: str, species: str, name: str) -> Path:
    """Return ``out_dir/<split>/<species>/<name>``, the layout of Keras and torchvision ImageFolder.

    Raises
    ------
    ValueError
        If `split` or `species` is unsafe (see :func:`safe_component`), `name`
        is not already a safe file name, or the resolved path, following
        symlinks, falls outside `out_dir`.
    """
    if safe_component(name) != name:
        raise ValueError(f"file name {name!r} is not a safe path component: build it with image_name")
    path = Path(out_dir, safe_component(split), safe_component(species), name)
    if not _resolves_inside(str(path), str(out_dir)):
        raise ValueError(f"image path {path} resolves outside the output folder {out_dir}: remove the symlink")
    return path


@functools.lru_cache(maxsize=4096)
def _folder_resolves_inside(folder: str, out_dir: str) -> bool:
    # Resolving follows symlinks with one system call per path component, so
    # the result is cached per folder. A build checks thousands of images.
    return Path(folder).resolve().is_relative_to(Path(out_dir).resolve())


def forget_resolved_folders() -> None:
    """Clear the cached folder checks of :func:`image_path`; call it before each build's export."""
    _folder_resolves_inside.cache_clear()


def _resolves_inside(path: str, out_dir: str) -> bool:
    """Return whether ``path`` stays inside ``out_dir`` after following symlinks.

    The folder's result is cached. The file itself is checked only when it is
    a symlink, which an image never is.
    """
    if not _folder_resolves_inside(os.path.dirname(path), out_dir):
        return False
    if os.path.islink(path):
        return Path(path).resolve().is_relative_to(Path(out_dir).resolve())
    return True
