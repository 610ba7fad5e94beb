"""Read a scan file into one float32 volume in canonical (RAS) orientation.

The loader accepts NIfTI-1/2 (``.nii``, ``.nii.gz``) and multi-page TIFF
stacks. It decides gzip by the file's first bytes, not its name, and it keeps
memory bounded: the raw data stays memory-mapped where nibabel or tifffile
allow it, and the only full-size array it allocates is the float32 result.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import tifffile
from nibabel.filebasedimages import ImageFileError
from nibabel.imageglobals import LoggingOutputSuppressor
from nibabel.wrapstruct import WrapStructError
from nibabel.spatialimages import HeaderDataError
from scipy import ndimage

from tasks.chunks import chunks

GZIP_MAGIC = b"\x1f\x8b"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# Voxel sizes that differ by more than this fraction are resampled to isotropic.
ANISOTROPY_TOLERANCE = 0.001

SCAN_SUFFIXES = (".nii.gz", ".nii", ".tiff", ".tif")

# Tiles of CONVERT_SLICES x CONVERT_TILE rows when converting to float32,
# and COUNT_PIECE voxels per bincount call: sizes that stay in cache.
CONVERT_SLICES = 16
CONVERT_TILE = 64
COUNT_PIECE = 1 << 18
# OpenCV types that carry the raw bits of 1-, 2-, 4- and 8-byte voxels
# through a transposition unchanged.
TRANSPOSE_BITS = {1: np.uint8, 2: np.uint16, 4: np.int32, 8: np.float64}
# OpenCV histograms count in float32, which is exact only below 2**24.
HISTOGRAM_EXACT_LIMIT = 1 << 24


class ScanReadError(Exception):
    """A scan that cannot be analysed, with the catalogue status and the reason.

    ``status`` is ``"corrupt"`` for damaged files (bad gzip stream, truncated
    data, unreadable header) and ``"unsupported"`` for well-formed files that
    do not hold one 3D scalar volume (4D series, RGB, 2D images).
    """

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Volume:
    """A scan's voxels after loading, reorientation and resampling.

    Attributes
    ----------
    data : ndarray of float32, shape (X, Y, Z)
        Scaled intensities; axis 0 points to the right, axis 1 anterior and
        axis 2 superior (RAS). NaN and infinite voxels are kept as they are.
    voxel_size : float
        Edge length of the (isotropic) voxels in the file's spatial unit.
    source_shape : tuple of int
        Shape of the stored array after squeezing trailing singleton axes.
    source_dtype : str
        Stored data type, e.g. ``">i2"`` for big-endian int16.
    source_orientation : str
        Axis codes of the stored array, e.g. ``"LAS"``.
    source_voxel_size : tuple of float
        Voxel sizes of the stored array along its own axes.
    resampled : bool
        Whether the volume was resampled to isotropic voxels.
    histogram : ValueCounts or None
        Every distinct voxel value and its count, for 8- and 16-bit integer
        scans that were not resampled; None otherwise.
    """

    data: np.ndarray
    voxel_size: float
    source_shape: tuple[int, ...]
    source_dtype: str
    source_orientation: str
    source_voxel_size: tuple[float, ...]
    resampled: bool
    histogram: "ValueCounts | None" = None


@dataclass(frozen=True)
class ValueCounts:
    """The distinct values of a volume and how many voxels hold each.

    Attributes
    ----------
    values : ndarray of float32, shape (n,)
        Scaled values in ascending order, computed with the same float32
        operations as the volume, so they are bit-identical to its voxels.
    counts : ndarray of int64, shape (n,)
        Voxels per value; every count is positive.
    """

    values: np.ndarray
    counts: np.ndarray


def scan_stem(name: str) -> str | None:
    """Return a file name without its scan suffix, or None for other files.

    >>> scan_stem("Bone_specimen3_avizo.nii.gz")
    'Bone_specimen3_avizo'
    >>> scan_stem("notes.txt") is None
    True
    """
    lowered = name.lower()
    for suffix in SCAN_SUFFIXES:
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def sniff_format(path: Path) -> str:
    """Return ``"gzip"``, ``"tiff"`` or ``"raw"`` from the file's first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head in TIFF_MAGICS:
        return "tiff"
    return "raw"


def load_volume(path: Path, *, tiff_voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Volume:
    """Load a scan as a canonical, isotropic float32 volume.

    Parameters
    ----------
    path : Path
        A NIfTI or multi-page TIFF file. Gzip compression is detected from
        the content, so a gzip stream named ``.nii`` and a plain file named
        ``.nii.gz`` both load.
    tiff_voxel_size : tuple of 3 float
        Voxel size (x, y, z) for TIFF stacks, which do not record one.

    Returns
    -------
    Volume

    Raises
    ------
    ScanReadError
        With status ``"corrupt"`` or ``"unsupported"`` and a reason that
        names the problem.
    """
    if Path(path).stat().st_size == 0:
        raise ScanReadError("corrupt", "file is empty (0 bytes)")
    kind = sniff_format(path)
    if kind == "tiff":
        raw, zooms, orientation = _read_tiff(path, tiff_voxel_size)
        affine_ornt = nib.orientations.axcodes2ornt(("R", "A", "S"))
    else:
        image = _open_nifti(path, compressed=kind == "gzip")
        raw, zooms, affine_ornt, orientation = _read_nifti(image, path)

    source_shape = tuple(int(n) for n in raw.shape)
    source_dtype = raw.dtype.str
    slope, inter = (raw.slope, raw.inter) if isinstance(raw, _Scaled) else (1.0, 0.0)
    stored = raw.array if isinstance(raw, _Scaled) else raw
    canonical = nib.orientations.apply_orientation(stored, affine_ornt)
    canonical_zooms = _reorder_zooms(zooms, affine_ornt)
    data, voxel_size, resampled, raw_counts = _to_isotropic_float32(canonical, canonical_zooms, slope, inter)
    histogram = _scaled_value_counts(raw_counts, stored.dtype, slope, inter) if raw_counts is not None else None

    return Volume(
        data=data,
        voxel_size=voxel_size,
        source_shape=source_shape,
        source_dtype=source_dtype,
        source_orientation=orientation,
        source_voxel_size=tuple(float(z) for z in zooms),
        resampled=resampled,
        histogram=histogram,
    )


@dataclass(frozen=True)
class _Scaled:
    """Unscaled stored voxels with the header's linear scaling."""

    array: np.ndarray
    slope: float
    inter: float

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype


def _open_nifti(path: Path, *, compressed: bool) -> nib.Nifti1Image:
    # nibabel logs its own complaints about a damaged header at ERROR level;
    # the ScanReadError below carries the reason instead.
    with LoggingOutputSuppressor():
        return _open_nifti_quietly(path, compressed=compressed)


def _open_nifti_quietly(path: Path, *, compressed: bool) -> nib.Nifti1Image:
    named_compressed = path.name.lower().endswith(".gz")
    try:
        if compressed == named_compressed:
            return nib.load(path, mmap=True)
        # The name lies about the compression, so give nibabel a file object
        # that matches the content instead of letting it choose by suffix.
        fileobj = gzip.open(path, "rb") if compressed else open(path, "rb")
        holder = nib.FileHolder(filename=str(path), fileobj=fileobj)
        for image_class in (nib.Nifti1Image, nib.Nifti2Image):
            try:
                fileobj.seek(0)
                return image_class.from_file_map({"image": holder, "header": holder}, mmap=False)
            except (HeaderDataError, ImageFileError, WrapStructError):
                continue
        raise ImageFileError("not a NIfTI-1 or NIfTI-2 header")
    except (ImageFileError, HeaderDataError, WrapStructError, EOFError, OSError, zlib.error, ValueError) as error:
        # The compression is worth naming only when the file name suggests the other one.
        note = ""
        if compressed != named_compressed:
            note = " (gzip-compressed)" if compressed else " (not gzip-compressed)"
        raise ScanReadError("corrupt", f"unreadable header{note}: {error}") from error


def _read_nifti(image, path: Path):
    header_dtype = image.get_data_dtype()
    if header_dtype.names is not None or header_dtype.kind == "V":
        raise ScanReadError("unsupported", f"RGB or structured voxels ({header_dtype}) are not a scalar volume")

    shape = _squeeze_trailing(image.shape)
    if len(shape) > 3:
        raise ScanReadError("unsupported", f"4D data with {shape[3]} volumes; expected one 3D volume")
    if len(shape) < 3:
        raise ScanReadError("unsupported", f"{len(shape)}D data of shape {shape}; expected a 3D volume")

    try:
        array = np.asanyarray(image.dataobj.get_unscaled()).reshape(shape)
    except (ValueError, EOFError, OSError, zlib.error) as error:
        raise ScanReadError("corrupt", f"truncated or damaged voxel data: {error}") from error

    slope = float(image.dataobj.slope)
    inter = float(image.dataobj.inter)
    ornt = nib.orientations.io_orientation(image.affine)
    if np.isnan(ornt).any():
        raise ScanReadError("corrupt", f"affine has no usable orientation: {image.affine.tolist()}")
    orientation = "".join(nib.orientations.aff2axcodes(image.affine))
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    if not all(np.isfinite(zooms)) or min(zooms) <= 0:
        # Zero or missing voxel sizes are common in exports; treat them as 1.
        zooms = (1.0, 1.0, 1.0)
    return _Scaled(array, slope, inter), zooms, ornt, orientation


def _read_tiff(path: Path, voxel_size: tuple[float, float, float]):
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = _squeeze_trailing(series.shape)
            if len(shape) == 4 and shape[-1] in (3, 4):
                raise ScanReadError("unsupported", f"RGB TIFF stack of shape {shape} is not a scalar volume")
            if len(shape) != 3:
                raise ScanReadError("unsupported", f"TIFF stack of shape {shape}; expected (z, y, x)")
            try:
                stack = tifffile.memmap(path)
            except ValueError:
                # Compressed or tiled pages cannot be memory-mapped.
                stack = series.asarray()
    except ScanReadError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, EOFError) as error:
        raise ScanReadError("corrupt", f"unreadable TIFF: {error}") from error

    # Pages are z, rows y and columns x; the volume convention is (x, y, z).
    zyx = np.asarray(stack).reshape(shape)
    return zyx.transpose(2, 1, 0), tuple(float(v) for v in voxel_size), "RAS"


def _squeeze_trailing(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _reorder_zooms(zooms: tuple[float, ...], ornt: np.ndarray) -> tuple[float, float, float]:
    # Row i of an orientation array sends stored axis i to output axis ornt[i, 0].
    reordered = [0.0, 0.0, 0.0]
    for axis, (target, _flip) in enumerate(ornt):
        reordered[int(target)] = float(zooms[axis])
    return tuple(reordered)


def _to_isotropic_float32(array: np.ndarray, zooms: tuple[float, float, float], slope: float, inter: float):
    """Return (float32 scaled volume, voxel size, resampled, raw value counts or None)."""
    smallest = min(zooms)
    if max(zooms) <= smallest * (1.0 + ANISOTROPY_TOLERANCE):
        try:
            data, raw_counts = _convert_in_blocks(array, slope, inter)
        except (ValueError, OSError, EOFError, zlib.error) as error:
            raise ScanReadError("corrupt", f"truncated or damaged voxel data: {error}") from error
        return data, float(zooms[0]), False, raw_counts

    # NOTE: resampling to the finest voxel size keeps every detail but grows
    # the volume by the anisotropy ratio; a very anisotropic scan may not fit.
    factors = [zoom / smallest for zoom in zooms]
    try:
        resampled = ndimage.zoom(array, factors, output=np.float32, order=1, grid_mode=True, mode="nearest")
    except (ValueError, OSError, EOFError, zlib.error) as error:
        raise ScanReadError("corrupt", f"truncated or damaged voxel data: {error}") from error
    _scale_inplace(resampled, slope, inter)
    return resampled, float(smallest), True, None


def _scale_inplace(block: np.ndarray, slope: float, inter: float) -> None:
    # The same two float32 operations everywhere, so that value tables and
    # voxels stay bit-identical.
    if slope != 1.0:
        block *= np.float32(slope)
    if inter != 0.0:
        block += np.float32(inter)


def _convert_in_blocks(array: np.ndarray, slope: float, inter: float):
    """Copy a (memory-mapped) array into one C-ordered float32 volume.

    For 8- and 16-bit integers it also counts each raw value on the way,
    which is much cheaper than a float histogram of the result later.
    """
    data = np.empty(array.shape, dtype=np.float32)
    counted = array.dtype.kind in "iu" and array.dtype.itemsize <= 2
    raw_counts = np.zeros(1 << (8 * array.dtype.itemsize), dtype=np.int64) if counted else None
    source, target = _with_positive_strides(array, data)
    fast = int(np.argmin(source.strides))
    if _transposable(source, fast):
        _copy_transposed_planes(source, target, fast, slope, inter, raw_counts)
    else:
        _copy_tiles(source, target, slope, inter, raw_counts)
    return data, raw_counts


def _with_positive_strides(array: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip the axes that a reorientation reversed, in both the source and the target.

    Copying a flipped source into an equally flipped target writes the same
    voxels, and with positive strides the source's rows can go to OpenCV.
    """
    flips = tuple(slice(None, None, -1) if stride < 0 else slice(None) for stride in array.strides)
    return array[flips], data[flips]


def _transposable(source: np.ndarray, fast: int) -> bool:
    """Return whether the planes along ``fast`` and the last axis are 2D images OpenCV can read in place."""
    return (
        fast != 2
        and source.itemsize in TRANSPOSE_BITS
        and source.strides[fast] == source.itemsize
        # Rows of the plane must not overlap, which a singleton axis's stride does not promise.
        and source.strides[2] >= source.shape[fast] * source.itemsize
    )


def _copy_transposed_planes(source: np.ndarray, target: np.ndarray, fast: int, slope: float, inter: float,
                            raw_counts: np.ndarray | None) -> None:
    """Copy plane by plane where the file's fastest axis is not the volume's last axis.

    NIfTI data is stored in Fortran order, so x varies fastest in the file
    but z in the C-ordered volume. Each plane that contains both axes is
    transposed by OpenCV on its raw bits (about five times faster than a
    strided NumPy copy on a 512^3 scan) and then converted to float32 with
    contiguous rows on both sides.
    """
    other = 1 - fast  # the axis that is neither the fast one nor the last
    planes_in = source.transpose(other, 2, fast)  # rows along z, contiguous along the fast axis
    planes_out = target.transpose(other, fast, 2)
    bits_type = TRANSPOSE_BITS[source.itemsize]
    for index in range(planes_in.shape[0]):
        bits = cv2.transpose(planes_in[index].view(bits_type))
        plane_out = planes_out[index]
        plane_out[...] = bits.view(source.dtype)
        _scale_inplace(plane_out, slope, inter)
        if raw_counts is not None:
            _count_raw_values(bits.view(source.dtype), raw_counts)


def _copy_tiles(source: np.ndarray, target: np.ndarray, slope: float, inter: float,
                raw_counts: np.ndarray | None) -> None:
    """Copy in tiles along the source's slowest axis, for layouts OpenCV cannot transpose.

    The tiles are small enough that strided writes stay in cache.
    """
    slow = int(np.argmax(source.strides))
    inner = 0 if slow != 0 else 1
    for start, stop in chunks(source.shape[slow], CONVERT_SLICES):
        for inner_start, inner_stop in chunks(source.shape[inner], CONVERT_TILE):
            index = [slice(None)] * 3
            index[slow], index[inner] = slice(start, stop), slice(inner_start, inner_stop)
            block = np.asarray(source[tuple(index)])
            tile = target[tuple(index)]
            tile[...] = block
            _scale_inplace(tile, slope, inter)
            if raw_counts is not None:
                _count_raw_values(block, raw_counts)


def _count_raw_values(block: np.ndarray, raw_counts: np.ndarray) -> None:
    """Add the counts of each raw bit pattern in ``block`` to ``raw_counts``."""
    native = block.astype(block.dtype.newbyteorder("="), copy=False)
    unsigned = native.view(f"u{block.dtype.itemsize}")
    if unsigned.ndim == 2 and unsigned.flags.c_contiguous and unsigned.size < HISTOGRAM_EXACT_LIMIT:
        # OpenCV's histogram is about 1.5 times faster than bincount here. Its
        # float32 counts are exact below 2**24 voxels.
        counts = cv2.calcHist([unsigned], [0], None, [raw_counts.size], [0, raw_counts.size])
        np.add(raw_counts, counts.ravel(), out=raw_counts, casting="unsafe")
        return
    # Counting in pieces keeps bincount's intp copy of its input in cache.
    flat = unsigned.ravel(order="K")
    for start, stop in chunks(flat.size, COUNT_PIECE):
        raw_counts += np.bincount(flat[start:stop], minlength=raw_counts.size)


def _scaled_value_counts(raw_counts: np.ndarray, dtype: np.dtype, slope: float, inter: float) -> ValueCounts:
    """Turn counts indexed by raw bit pattern into sorted scaled values and counts."""
    patterns = np.flatnonzero(raw_counts)
    unsigned = patterns.astype(f"u{dtype.itemsize}")
    raw_values = unsigned.view(np.dtype(dtype).newbyteorder("=")) if dtype.kind == "i" else unsigned
    values = raw_values.astype(np.float32)
    _scale_inplace(values, slope, inter)
    # A negative slope reverses the order, and float32 may merge neighbours.
    order = np.argsort(values, kind="stable")
    return ValueCounts(values=values[order], counts=raw_counts[patterns][order])
