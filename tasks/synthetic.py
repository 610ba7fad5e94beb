"""Synthetic micro-CT collections of foraminifer fossils.

Each scan is a NIfTI volume of a hollow chambered shell in a gray rock matrix, with a
circular field of view, scanner blur and noise. Collections follow the project's naming
rule ``<Species>_specimen<N>[_<rest>].nii[.gz]``, where ``<rest>`` names another scan of
the same specimen. The ``fossil-slices demo`` command, the tests and the benchmarks use
these collections in place of real scans.

Run ``python -m tasks.synthetic --help`` for the command-line options.
"""

from __future__ import annotations

import argparse
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation
from scipy.special import ndtri

MORPHOTYPES = ("planispiral", "trochospiral", "uniserial", "biserial", "discoidal", "conical")

# Genus -> shell architecture. Each morphotype approximates the genus's real shell
# only roughly, and several genera share one. The first six cover every morphotype,
# so a small demo collection shows them all.
GENUS_MORPHOTYPE = {
    "Alveolina": "planispiral",
    "Chrysalidina": "biserial",
    "Lockhartia": "trochospiral",
    "Orbitoides": "discoidal",
    "Dictyoconus": "conical",
    "Rhapydionina": "uniserial",
    "Ataxophragmium": "trochospiral",
    "Baculogypsina": "discoidal",
    "Minoxia": "conical",
    "Elphidiella": "planispiral",
    "Fallotia": "discoidal",
    "Arumella": "conical",
    "Coskinolina": "conical",
    "Daviesina": "trochospiral",
    "Coscinoidea": "biserial",
    "Glyphostomalloides": "biserial",
    "Nummulites": "planispiral",
    "Amphistegina": "trochospiral",
    "Cincoriola": "biserial",
    "Dictyoconoides": "conical",
    "Dukhania": "conical",
    "Fissolephidium": "discoidal",
    "Heterostegina": "planispiral",
    "Miscellanea": "planispiral",
    "Omphalocyclus": "discoidal",
    "Peneroplis": "uniserial",
    "Rotalia": "trochospiral",
}

# Scans per species in the original study: 27 species, 97 scans.
ORIGINAL_SCAN_COUNTS = {
    "Chrysalidina": 16,
    "Ataxophragmium": 7,
    "Baculogypsina": 7,
    "Minoxia": 6,
    "Elphidiella": 6,
    "Fallotia": 6,
    "Arumella": 5,
    "Lockhartia": 5,
    "Orbitoides": 5,
    "Rhapydionina": 5,
    "Alveolina": 4,
    "Coskinolina": 4,
    "Daviesina": 3,
    "Coscinoidea": 2,
    "Dictyoconus": 2,
    "Glyphostomalloides": 2,
    "Nummulites": 2,
    "Amphistegina": 1,
    "Cincoriola": 1,
    "Dictyoconoides": 1,
    "Dukhania": 1,
    "Fissolephidium": 1,
    "Heterostegina": 1,
    "Miscellanea": 1,
    "Omphalocyclus": 1,
    "Peneroplis": 1,
    "Rotalia": 1,
}

BASE_VOXEL_MM = 0.02  # 20 micrometres, a typical micro-CT voxel size for foraminifera
MIN_SIDE = 16  # voxels; smallest side that make_fossil_volume and the writers accept

# Scanner model, in voxels or in intensity units of the [0, 1] scale.
_BLUR_SIGMA_VOXELS = 0.7
_NOISE_SD = 0.035
_CUPPING = 0.04  # beam hardening brightens the rim of the field of view by this much
# Scans are cropped inside the reconstruction circle, so the circle (this many times
# half the longer side of the x-y plane) clips only the corners.
_FIELD_OF_VIEW = 1.12
_MIN_WALL_VOXELS = 1.8  # keeps thin walls bright enough after the blur in coarse scans
_GRAIN_LEVEL = 0.97  # dense grains such as pyrite are brighter than the shell

# Stored value = round(intensity * gain + offset); int16 also records the scaling
# (scl_slope, scl_inter) that maps stored values to a CT-number-like scale.
_CODECS = {
    "uint8": (np.uint8, 255.0, 0.0),
    "uint16": (np.uint16, 65535.0, 0.0),
    "avizo": (np.uint16, 50000.0, 1000.0),
    "int16": (np.int16, 8000.0, 0.0),
    "float32": (np.float32, 1.0, 0.0),
}
INT16_SLOPE = 0.5
INT16_INTER = -1000.0

# Mixed collections cycle through these encodings for the first scan of each specimen.
_MIXED_DTYPES = ("uint8", "uint16", "int16", "float32")
_MIXED_SUFFIXES = (".nii.gz", ".nii")
_MIXED_VOXEL_FACTORS = (
    (1.0, 1.0, 1.0),
    (0.8, 0.8, 0.8),
    (1.0, 1.0, 1.5),
    (1.25, 1.25, 1.25),
    (0.75, 0.75, 1.0),
)


@dataclass(frozen=True)
class _SpeciesTraits:
    """Shell design shared by every specimen of one species."""

    morphotype: str
    chamber_range: tuple[int, int]  # chambers per specimen; rings for discoidal shells
    growth: float  # size ratio per whorl, per chamber or the cone's flare exponent
    whorls: float
    axial: float  # relative thickness along the coiling or disc axis
    curvature: float  # arc of serial shells or spire height of trochospiral shells
    wall: float  # wall thickness in field units
    pore_fraction: float  # fraction of the outer wall opened by pores
    matrix_level: float
    lumen_level: float  # chamber fill: dark when empty, gray when filled with sediment
    wall_level: float


@dataclass(frozen=True)
class _Fossil:
    """One physical specimen.

    Chambers are in fossil coordinates, where the shell fits in the unit ball. Scale and
    offset are in field units, where 1 is half the longest side of the scanned field.
    """

    traits: _SpeciesTraits
    centers: np.ndarray  # (K, 3) chamber centres
    radii: np.ndarray  # (K, 3) semi-axes along each chamber's frame
    frames: np.ndarray  # (K, 3, 3) columns are each chamber's axes
    orientation: np.ndarray  # (3, 3) fossil -> world rotation
    scale: float  # fossil radius in field units
    offset: np.ndarray  # (3,) fossil centre in field units
    pore_waves: np.ndarray  # (4, 3) wave vectors of the pore pattern
    pore_phases: np.ndarray  # (4,)


@dataclass(frozen=True)
class _ScanPlan:
    """One file to write and how its volume relates to the specimen's first scan."""

    species: str
    specimen: int
    tag: str = ""  # text after the specimen token, e.g. "scanB" or "avizo"
    codec: str = "uint8"
    suffix: str = ".nii.gz"
    voxel_factors: tuple[float, float, float] = (1.0, 1.0, 1.0)
    flip_x: bool = False
    turn_deg: float = 0.0  # rotation of the specimen relative to its first scan
    reuse_first: bool = False  # another export of the first scan's voxels

    @property
    def name(self) -> str:
        rest = f"_{self.tag}" if self.tag else ""
        return f"{self.species}_specimen{self.specimen}{rest}{self.suffix}"


# ---------------------------------------------------------------------------
# Shell geometry


_TRAIT_RANGES = {
    # morphotype: ranges of chambers (rings for discoidal), growth, whorls, axial, curvature
    "planispiral": ((14, 24), (1.5, 2.0), (2.0, 2.8), (0.7, 1.6), (0.0, 0.0)),
    "trochospiral": ((12, 18), (1.6, 2.2), (2.0, 2.6), (0.6, 1.0), (0.3, 0.7)),
    "uniserial": ((4, 6), (1.25, 1.45), (1.0, 1.0), (0.85, 1.0), (0.0, 0.25)),
    "biserial": ((5, 8), (1.25, 1.4), (1.0, 1.0), (0.85, 1.0), (0.0, 0.15)),
    "discoidal": ((2, 4), (1.0, 1.0), (1.0, 1.0), (1.0, 1.8), (0.0, 0.0)),
    "conical": ((6, 11), (0.7, 1.3), (1.0, 1.0), (0.9, 1.3), (0.0, 0.0)),
}


def _check_morphotype(morphotype: str) -> None:
    if morphotype not in MORPHOTYPES:
        raise ValueError(f"unknown morphotype {morphotype!r}; use one of {', '.join(MORPHOTYPES)}")


def _draw_traits(morphotype: str, rng: np.random.Generator) -> _SpeciesTraits:
    chambers, growth, whorls, axial, curvature = _TRAIT_RANGES[morphotype]
    low = int(rng.integers(chambers[0], chambers[1] - 1, endpoint=True))
    return _SpeciesTraits(
        morphotype=morphotype,
        chamber_range=(low, low + 2),
        growth=float(rng.uniform(*growth)),
        whorls=float(rng.uniform(*whorls)),
        axial=float(rng.uniform(*axial)),
        curvature=float(rng.uniform(*curvature)),
        wall=float(rng.uniform(0.1, 0.16)),
        pore_fraction=float(rng.uniform(0.0, 0.1)),
        matrix_level=float(rng.uniform(0.12, 0.25)),
        lumen_level=float(rng.uniform(0.05, 0.3)),
        wall_level=float(rng.uniform(0.85, 0.95)),
    )


def _planar_frames(angles: np.ndarray) -> np.ndarray:
    """Frames whose first axis points along ``angles`` in the x-y plane, third axis z."""
    cos, sin = np.cos(angles), np.sin(angles)
    frames = np.zeros((len(angles), 3, 3))
    frames[:, 0, 0], frames[:, 1, 0] = cos, sin
    frames[:, 0, 1], frames[:, 1, 1] = -sin, cos
    frames[:, 2, 2] = 1.0
    return frames


def _spiral_chambers(traits: _SpeciesTraits, count: int, spire: float) -> tuple:
    """Chambers along a logarithmic spiral; ``spire`` > 0 raises early whorls (trochospiral)."""
    theta = np.linspace(0.0, 2 * np.pi * traits.whorls, count)
    rho = traits.growth ** (theta / (2 * np.pi))
    step = theta[1] - theta[0]
    # Radial semi-axes overlap the previous whorl and tangential ones the neighbours,
    # so the chambers form one connected shell.
    radial = 0.8 * rho * (1 - 1 / traits.growth)
    tangential = 0.65 * rho * step
    axial = 0.6 * rho * traits.axial
    height = spire * rho.max() * (1 - rho / rho.max())
    centers = np.stack([rho * np.cos(theta), rho * np.sin(theta), height], axis=1)
    radii = np.stack([radial, tangential, axial], axis=1)
    frames = _planar_frames(theta)

    proloculus_radius = 0.7
    centers = np.vstack([[0.0, 0.0, height[0]], centers])
    radii = np.vstack([[proloculus_radius] * 3, radii])
    frames = np.concatenate([np.eye(3)[None], frames])
    return centers, radii, frames


def _serial_chambers(traits: _SpeciesTraits, count: int, biserial: bool) -> tuple:
    """Chambers in one straight or arched row, or in two alternating rows."""
    size = traits.growth ** np.arange(count)
    if biserial:
        half_length = 0.6 * size
        step = 0.4 * (size[:-1] + size[1:])
        side = 0.35 * size * np.where(np.arange(count) % 2 == 0, 1.0, -1.0)
        radii = np.stack([half_length, size, size * traits.axial], axis=1)
    else:
        half_length = 0.6 * size
        step = 0.8 * (half_length[:-1] + half_length[1:])
        side = np.zeros(count)
        radii = np.stack([half_length, 1.1 * size, 1.1 * size * traits.axial], axis=1)

    x = np.concatenate([[0.0], np.cumsum(step)])
    bend = traits.curvature / max(x[-1], 1e-9)
    y = side + bend * x**2
    centers = np.stack([x, y, np.zeros(count)], axis=1)
    frames = _planar_frames(np.arctan(2 * bend * x))
    return centers, radii, frames


def _discoidal_chambers(traits: _SpeciesTraits, rings: int) -> tuple:
    """Two embryonic chambers ringed by concentric annuli of small chamberlets."""
    width = 1.0 / (rings + 1)
    embryo = 0.6 * width
    centers = [[-0.4 * width, 0.0, 0.0], [0.4 * width, 0.0, 0.0]]
    radii = [[embryo, embryo, embryo * traits.axial]] * 2
    angles = [0.0, 0.0]

    outer = width * (rings + 0.5)
    for ring in range(1, rings + 1):
        rho = width * (ring + 0.5)
        count = max(6, round(2 * np.pi * rho / (1.1 * width)))
        # Alternate rings are offset by half a chamberlet, as in real annular shells.
        phase = np.pi / count * (ring % 2)
        theta = phase + 2 * np.pi * np.arange(count) / count
        thickness = traits.axial * outer * (0.25 - 0.1 * rho / outer)
        for angle in theta:
            centers.append([rho * np.cos(angle), rho * np.sin(angle), 0.0])
            radii.append([0.62 * width, 0.62 * 2 * np.pi * rho / count, thickness])
            angles.append(angle)
    return np.array(centers), np.array(radii), _planar_frames(np.array(angles))


def _conical_chambers(traits: _SpeciesTraits, count: int) -> tuple:
    """Flat disc-shaped chambers stacked along z, widening from the apex."""
    t = np.linspace(0.0, 1.0, count)
    radius = 0.15 + 0.85 * t**traits.growth
    height = 1.4 * traits.axial
    half_thickness = 0.75 * height / (count - 1)
    centers = np.stack([np.zeros(count), np.zeros(count), t * height], axis=1)
    radii = np.stack([radius, radius, np.full(count, half_thickness)], axis=1)
    frames = np.repeat(np.eye(3)[None], count, axis=0)
    return centers, radii, frames


def _build_chambers(traits: _SpeciesTraits, count: int) -> tuple:
    builders = {
        "planispiral": lambda: _spiral_chambers(traits, count, spire=0.0),
        "trochospiral": lambda: _spiral_chambers(traits, count, spire=traits.curvature),
        "uniserial": lambda: _serial_chambers(traits, count, biserial=False),
        "biserial": lambda: _serial_chambers(traits, count, biserial=True),
        "discoidal": lambda: _discoidal_chambers(traits, count),
        "conical": lambda: _conical_chambers(traits, count),
    }
    centers, radii, frames = builders[traits.morphotype]()
    return _fit_unit_ball(centers, radii, frames)


def _fit_unit_ball(centers: np.ndarray, radii: np.ndarray, frames: np.ndarray) -> tuple:
    """Centre the shell's bounding box on the origin and scale the shell into the unit ball."""
    # Points spread evenly over the unit sphere (a Fibonacci lattice), mapped onto
    # every chamber's surface, give the shell's extent within about 1%.
    index = np.arange(256) + 0.5
    polar = np.arccos(1 - 2 * index / 256)
    azimuth = np.pi * (1 + 5**0.5) * index
    sphere = np.stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], axis=1)
    surface = centers[:, None, :] + np.einsum("kij,knj->kni", frames, sphere[None] * radii[:, None, :])
    surface = surface.reshape(-1, 3)

    middle = 0.5 * (surface.min(axis=0) + surface.max(axis=0))
    extent = float(np.linalg.norm(surface - middle, axis=1).max())
    return (centers - middle) / extent, radii / extent, frames


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    # A normalised 4D Gaussian is a uniformly distributed unit quaternion.
    return Rotation.from_quat(rng.normal(size=4)).as_matrix()


def _draw_specimen(traits: _SpeciesTraits, rng: np.random.Generator) -> _Fossil:
    count = int(rng.integers(traits.chamber_range[0], traits.chamber_range[1], endpoint=True))
    centers, radii, frames = _build_chambers(traits, count)
    radii = radii * rng.uniform(0.92, 1.08, size=radii.shape)

    scale = float(rng.uniform(0.85, 0.95))
    # The offset keeps the shell inside the unit ball and so inside the field of view.
    room = min(0.97 - scale, 0.08)
    direction = rng.normal(size=3)
    offset = direction / np.linalg.norm(direction) * rng.uniform(0.0, room)

    pore_spacing = 0.12  # fossil units
    waves = rng.normal(size=(4, 3))
    waves *= 2 * np.pi / pore_spacing / np.linalg.norm(waves, axis=1, keepdims=True)
    return _Fossil(
        traits=traits,
        centers=centers,
        radii=radii,
        frames=frames,
        orientation=_random_rotation(rng),
        scale=scale,
        offset=offset,
        pore_waves=waves,
        pore_phases=rng.uniform(0.0, 2 * np.pi, size=4),
    )


# ---------------------------------------------------------------------------
# Rendering


def _world_points(shape: tuple[int, int, int], voxel_mm: np.ndarray, unit_mm: float) -> np.ndarray:
    """Voxel centres as an (X*Y*Z, 3) array, in units of ``unit_mm`` from the volume centre."""
    axes = [(np.arange(n) + 0.5 - n / 2) * v / unit_mm for n, v in zip(shape, voxel_mm)]
    grid = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1)


def _nearest_chambers(fossil: _Fossil, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the smallest and second-smallest ellipsoid radius of each point and the nearest chamber.

    The ellipsoid radius is 1 on a chamber's surface and below 1 inside it.
    """
    points = points.astype(np.float32)
    first = np.full(len(points), np.inf, dtype=np.float32)
    second = np.full(len(points), np.inf, dtype=np.float32)
    nearest = np.zeros(len(points), dtype=np.intp)
    for index, (center, radii, frame) in enumerate(zip(fossil.centers, fossil.radii, fossil.frames)):
        # Work with squared radii and take the square root once at the end.
        scaled = (points - center.astype(np.float32)) @ (frame / radii).astype(np.float32)
        level = np.einsum("ij,ij->i", scaled, scaled)
        second = np.minimum(second, np.maximum(first, level))
        nearest[level < first] = index
        first = np.minimum(first, level)
    return np.sqrt(first), np.sqrt(second), nearest


def _shell_masks(
    fossil: _Fossil, shape: tuple[int, int, int], voxel_mm: np.ndarray, unit_mm: float, turn: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the (wall, chamber lumen) boolean masks of the shell, each of ``shape``."""
    world = _world_points(shape, voxel_mm, unit_mm)
    rotation = turn @ fossil.orientation
    local = (world - fossil.offset) @ rotation / fossil.scale
    first, second, nearest = _nearest_chambers(fossil, local)
    inside = (first < 1.0).reshape(shape)

    wall_thickness = max(fossil.traits.wall, _MIN_WALL_VOXELS * voxel_mm.max() / unit_mm)
    depth = ndimage.distance_transform_edt(inside, sampling=voxel_mm / unit_mm)
    outer_wall = inside & (depth <= wall_thickness)

    # Between two equal spheres of radius r, the normalised radii differ by 2d/r at
    # distance d from the plane that bisects them, so this approximates the distance
    # to the septum between the two nearest chambers.
    mean_radius = np.exp(np.log(fossil.radii).mean(axis=1))[nearest] * fossil.scale
    septum_distance = ((second - first) * mean_radius / 2).reshape(shape)
    wall = outer_wall | (inside & (septum_distance <= wall_thickness / 2))

    waves = np.cos(local @ fossil.pore_waves.T + fossil.pore_phases).mean(axis=1)
    # The mean of four cosines with random phases has a standard deviation near 0.35.
    threshold = 0.35 * ndtri(1.0 - max(fossil.traits.pore_fraction, 1e-6))
    pores = outer_wall & (waves.reshape(shape) > threshold)
    wall &= ~pores
    return wall, inside & ~wall


def _rock_matrix(shape: tuple[int, int, int], level: float, rng: np.random.Generator) -> np.ndarray:
    """Gray rock with low-frequency texture, as a float64 volume of ``shape``."""
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=3.0)
    texture /= max(float(texture.std()), 1e-9)
    return level + 0.04 * texture


def _bright_grains(outside: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mark a few small dense mineral grains (e.g. pyrite) in the matrix."""
    grains = np.zeros(outside.shape, dtype=bool)
    candidates = np.flatnonzero(outside)
    count = int(rng.integers(0, 4, endpoint=True))
    if count == 0 or candidates.size == 0:
        return grains
    grains.flat[rng.choice(candidates, size=count, replace=False)] = True
    return ndimage.binary_dilation(grains)


def _field_of_view_radius(shape: tuple[int, int, int], voxel_mm: np.ndarray) -> np.ndarray:
    """Distance of each voxel from the rotation axis (z), 1 on the reconstruction circle."""
    half = _FIELD_OF_VIEW * max(shape[0] * voxel_mm[0], shape[1] * voxel_mm[1]) / 2
    x = (np.arange(shape[0]) + 0.5 - shape[0] / 2) * voxel_mm[0] / half
    y = (np.arange(shape[1]) + 0.5 - shape[1] / 2) * voxel_mm[1] / half
    return np.hypot(x[:, None], y[None, :])[:, :, None]


def _render(
    fossil: _Fossil,
    shape: tuple[int, int, int],
    voxel_mm: np.ndarray,
    unit_mm: float,
    turn: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Render one scan of ``fossil`` as a float32 volume of ``shape`` in [0, 1].

    ``unit_mm`` is the physical length of one field unit, so scans of one
    specimen at different voxel sizes show a shell of the same physical size.
    """
    traits = fossil.traits
    wall, lumen = _shell_masks(fossil, shape, voxel_mm, unit_mm, turn)

    volume = _rock_matrix(shape, traits.matrix_level, rng)
    volume[lumen] = traits.lumen_level
    volume[wall] = traits.wall_level
    volume[_bright_grains(~(wall | lumen), rng)] = _GRAIN_LEVEL

    volume = ndimage.gaussian_filter(volume, sigma=_BLUR_SIGMA_VOXELS)
    radius = _field_of_view_radius(shape, voxel_mm)
    volume += _CUPPING * radius**2
    volume += rng.normal(0.0, _NOISE_SD, size=shape)
    # Reconstruction leaves everything outside the circle swept by the beam at zero.
    volume = np.where(radius <= 1.0, volume, 0.0)
    return np.clip(volume, 0.0, 1.0).astype(np.float32)


def _unit_mm(shape: tuple[int, int, int]) -> float:
    """Return half the longest side of a ``shape`` volume at ``BASE_VOXEL_MM``, in mm.

    The shell is sized to the longest side, so shorter sides cut it, as in a scan of a
    region of interest, and a flat volume still shows mostly shell and rock.
    """
    return max(shape) * BASE_VOXEL_MM / 2


def _check_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"shape {shape!r} must have 3 sides (x, y, z)")
    if min(shape) < MIN_SIDE:
        raise ValueError(f"shape {tuple(shape)!r} is too small; use at least {MIN_SIDE} voxels per side")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def make_fossil_volume(shape: tuple[int, int, int], morphotype: str, rng: np.random.Generator) -> np.ndarray:
    """Render one synthetic micro-CT scan of a foraminifer.

    The scan shows a hollow chambered shell (walls with pores, septa between chambers)
    at a random size, position and orientation, in gray rock inside a circular field of
    view around the z axis, with Gaussian blur, beam-hardening cupping and noise.

    Parameters
    ----------
    shape : tuple of int
        Volume shape (x, y, z) in voxels, at least ``MIN_SIDE`` per side.
    morphotype : str
        Shell architecture, one of ``MORPHOTYPES``.
    rng : numpy.random.Generator
        Source of every random choice; the same generator state gives the same volume.

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape`` with intensities in [0, 1]: exactly 0 outside the
        field of view, and before blur and noise 0.05-0.3 for rock and chamber fill
        and 0.85-0.95 for shell walls.

    Raises
    ------
    ValueError
        If ``morphotype`` is unknown or ``shape`` is not 3 sides of at least ``MIN_SIDE``.
    """
    _check_morphotype(morphotype)
    shape = _check_shape(shape)
    traits = _draw_traits(morphotype, rng)
    fossil = _draw_specimen(traits, rng)
    voxel_mm = np.full(3, BASE_VOXEL_MM)
    return _render(fossil, shape, voxel_mm, _unit_mm(shape), np.eye(3), rng)


# ---------------------------------------------------------------------------
# NIfTI encoding


def _affine(shape: tuple[int, int, int], voxel_mm: np.ndarray, flip_x: bool) -> np.ndarray:
    """RAS affine centring the volume on the origin, with x reversed when ``flip_x``."""
    signs = np.array([-1.0 if flip_x else 1.0, 1.0, 1.0])
    affine = np.diag([*(signs * voxel_mm), 1.0])
    affine[:3, 3] = -signs * voxel_mm * (np.asarray(shape) - 1) / 2
    return affine


def _encode(volume: np.ndarray, plan: _ScanPlan, voxel_mm: np.ndarray, morphotype: str) -> bytes:
    """Encode ``volume`` as NIfTI file bytes in ``plan``'s dtype, gzip-compressed for .nii.gz."""
    dtype, gain, offset = _CODECS[plan.codec]
    data = volume * gain + offset
    if np.issubdtype(dtype, np.integer):
        data = np.rint(data)
    data = data.astype(dtype)
    if plan.flip_x:
        # The flipped affine maps the reversed array onto the same world positions.
        data = np.ascontiguousarray(data[::-1])

    affine = _affine(volume.shape, voxel_mm, plan.flip_x)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = f"fossil-slices synthetic {morphotype}".encode()
    if plan.codec == "int16":
        # nibabel (checked with 5.4) writes the header's scaling unchanged when the
        # array already has the stored dtype.
        image.header.set_slope_inter(INT16_SLOPE, INT16_INTER)

    raw = image.to_bytes()
    if plan.suffix == ".nii":
        return raw
    # gzip.compress writes mtime 0 and no file name, so the bytes depend only on the data.
    return gzip.compress(raw, compresslevel=6, mtime=0)


# ---------------------------------------------------------------------------
# Collections


def _species_key(species: str) -> int:
    return zlib.crc32(species.encode())


def _species_traits(species: str, seed: int) -> _SpeciesTraits:
    rng = np.random.default_rng([seed, _species_key(species), 0])
    return _draw_traits(GENUS_MORPHOTYPE[species], rng)


def _scan_shape(shape: tuple[int, int, int], voxel_factors: tuple[float, float, float]) -> tuple[int, int, int]:
    """Shape that keeps the physical field of view when voxels are ``voxel_factors`` times larger."""
    return tuple(max(MIN_SIDE, round(n / f)) for n, f in zip(shape, voxel_factors))


def _write_plan(out_dir: Path, plans: list[_ScanPlan], shape: tuple[int, int, int], seed: int) -> list[Path]:
    """Render and write every planned scan; scans of one specimen share one fossil."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    fossils: dict[tuple[str, int], _Fossil] = {}
    first_volumes: dict[tuple[str, int], np.ndarray] = {}
    scans_so_far: dict[tuple[str, int], int] = {}

    for plan in plans:
        specimen = (plan.species, plan.specimen)
        key = _species_key(plan.species)
        # Seeds depend on the specimen and its scan number only, so adding species or
        # rescans elsewhere leaves a scan's voxels unchanged.
        scan_number = scans_so_far.get(specimen, 0) + 1
        scans_so_far[specimen] = scan_number
        if specimen not in fossils:
            traits = _species_traits(plan.species, seed)
            fossils[specimen] = _draw_specimen(traits, np.random.default_rng([seed, key, plan.specimen, 0]))
        fossil = fossils[specimen]

        voxel_mm = BASE_VOXEL_MM * np.asarray(plan.voxel_factors)
        if plan.reuse_first:
            volume = first_volumes[specimen]
        else:
            rng = np.random.default_rng([seed, key, plan.specimen, scan_number])
            axis = rng.normal(size=3)
            turn = Rotation.from_rotvec(np.deg2rad(plan.turn_deg) * axis / np.linalg.norm(axis)).as_matrix()
            scan_shape = _scan_shape(shape, plan.voxel_factors)
            volume = _render(fossil, scan_shape, voxel_mm, _unit_mm(shape), turn, rng)
            first_volumes.setdefault(specimen, volume)

        path = out_dir / plan.name
        path.write_bytes(_encode(volume, plan, voxel_mm, fossil.traits.morphotype))
        written.append(path)
    return sorted(written)


def _first_scan(species: str, specimen: int, index: int, mixed: bool) -> _ScanPlan:
    """Plan the first scan of a specimen; mixed collections cycle encodings by ``index``."""
    if not mixed:
        return _ScanPlan(species, specimen)
    return _ScanPlan(
        species,
        specimen,
        codec=_MIXED_DTYPES[index % len(_MIXED_DTYPES)],
        suffix=_MIXED_SUFFIXES[(index // len(_MIXED_DTYPES)) % len(_MIXED_SUFFIXES)],
        voxel_factors=_MIXED_VOXEL_FACTORS[index % len(_MIXED_VOXEL_FACTORS)],
        flip_x=index % 3 == 2,
    )


def _rescan(first: _ScanPlan, tag: str, turn_deg: float, voxel_factor: float, codec: str) -> _ScanPlan:
    """Plan another scan of the same specimen, turned by ``turn_deg``, with isotropic voxels."""
    return _ScanPlan(
        first.species,
        first.specimen,
        tag=tag,
        codec=codec,
        suffix=first.suffix,
        voxel_factors=(voxel_factor,) * 3,
        turn_deg=turn_deg,
    )


def _collection_rescan(first: _ScanPlan, turn_deg: float, mixed: bool) -> _ScanPlan:
    """Plan a ``_scanB`` at another voxel size and, in mixed collections, another dtype."""
    voxel_factor = 1.25 if first.voxel_factors[0] <= 1.0 else 0.8
    codec = first.codec
    if mixed:
        codec = _MIXED_DTYPES[(_MIXED_DTYPES.index(first.codec) + 1) % len(_MIXED_DTYPES)]
    return _rescan(first, "scanB", turn_deg, voxel_factor, codec)


def _avizo_export(first: _ScanPlan) -> _ScanPlan:
    """Plan a second export of the first scan's voxels, as uint16 with a scale and an offset."""
    return _ScanPlan(
        first.species,
        first.specimen,
        tag="avizo",
        codec="avizo",
        suffix=".nii.gz",
        voxel_factors=first.voxel_factors,
        flip_x=first.flip_x,
        reuse_first=True,
    )


def _check_collection_args(n_species: int, specimens_per_species: int, seed: int, rescans: int) -> None:
    if not 1 <= n_species <= len(GENUS_MORPHOTYPE):
        raise ValueError(f"n_species={n_species} is out of range; use 1 to {len(GENUS_MORPHOTYPE)}")
    if specimens_per_species < 1:
        raise ValueError(f"specimens_per_species={specimens_per_species} must be at least 1")
    if seed < 0:
        raise ValueError(f"seed={seed} must be 0 or more")
    total = n_species * specimens_per_species
    if not 0 <= rescans <= total:
        raise ValueError(f"rescans={rescans} is out of range; use 0 to {total}, one per specimen at most")


def write_collection(
    out_dir: Path,
    *,
    n_species: int = 4,
    specimens_per_species: int = 4,
    shape: tuple[int, int, int] = (48, 48, 48),
    seed: int = 0,
    mixed: bool = False,
    rescans: int = 0,
) -> list[Path]:
    """Write a synthetic collection of scans, one or more per specimen.

    Species are the first ``n_species`` genera of ``GENUS_MORPHOTYPE``, each with its
    own morphotype and shell traits. Specimens of a species differ in size, orientation,
    position and chamber count. By default every scan is uint8 ``.nii.gz`` with
    ``BASE_VOXEL_MM`` isotropic voxels.

    Parameters
    ----------
    out_dir : pathlib.Path
        Folder to write into; created when missing. Existing files of the same names
        are overwritten and other files are left alone.
    n_species : int
        Number of species, 1 to 27.
    specimens_per_species : int
        Specimens per species, named ``specimen1`` onwards.
    shape : tuple of int
        Volume shape (x, y, z) in voxels at ``BASE_VOXEL_MM`` voxels.
    seed : int
        Seed of every random choice; the same arguments give byte-identical files.
    mixed : bool
        Cycle the scans through uint8, uint16, int16 (stored with ``INT16_SLOPE`` and
        ``INT16_INTER``) and float32, through ``.nii.gz`` and ``.nii``, and through
        isotropic and anisotropic voxel sizes. The array shape changes with the voxel
        size so that the field of view keeps its physical size. Every third scan stores
        x reversed with a negative x voxel size in the affine.
    rescans : int
        Number of specimens that get one extra scan each. Rescans alternate between
        ``_scanB`` (the fossil turned by 10-40 degrees at another voxel size) and
        ``_avizo`` (the same voxels stored as uint16 with a scale and an offset).

    Returns
    -------
    list of pathlib.Path
        The written files, sorted.

    Raises
    ------
    ValueError
        If a count, the seed or ``shape`` is out of range.
    """
    _check_collection_args(n_species, specimens_per_species, seed, rescans)
    shape = _check_shape(shape)
    species_names = list(GENUS_MORPHOTYPE)[:n_species]
    specimens = [(s, n) for s in species_names for n in range(1, specimens_per_species + 1)]

    rng = np.random.default_rng([seed, 1])
    chosen = sorted(rng.permutation(len(specimens))[:rescans])
    turns = rng.uniform(10.0, 40.0, size=len(chosen))

    plans = []
    for index, (species, specimen) in enumerate(specimens):
        plans.append(_first_scan(species, specimen, index, mixed))
    for order, (index, turn_deg) in enumerate(zip(chosen, turns)):
        first = plans[index]
        extra = _collection_rescan(first, float(turn_deg), mixed) if order % 2 == 0 else _avizo_export(first)
        plans.append(extra)
    return _write_plan(Path(out_dir), plans, shape, seed)


def _original_plan() -> list[_ScanPlan]:
    """Plan the original study's scans: one per specimen except Minoxia and Chrysalidina specimen 1."""
    plans = []
    for species, scans in ORIGINAL_SCAN_COUNTS.items():
        if species == "Minoxia":
            # 3 specimens, each a raw scan plus an Avizo export of it.
            for specimen in range(1, scans // 2 + 1):
                first = _ScanPlan(species, specimen)
                plans += [first, _avizo_export(first)]
        elif species == "Chrysalidina":
            # Specimen 1 was scanned three times, so 16 scans are 14 specimens.
            first = _ScanPlan(species, 1)
            plans += [first, _rescan(first, "scanB", 30.0, 1.25, "uint8"), _rescan(first, "scanC", 75.0, 0.8, "uint8")]
            plans += [_ScanPlan(species, specimen) for specimen in range(2, scans - 1)]
        else:
            plans += [_ScanPlan(species, specimen) for specimen in range(1, scans + 1)]
    return plans


def write_like_original(out_dir: Path, *, shape: tuple[int, int, int] = (32, 32, 32), seed: int = 0) -> list[Path]:
    """Write a collection with the species and scan counts of the original study.

    The collection has 27 species and 97 scans (``ORIGINAL_SCAN_COUNTS``). Minoxia's 6
    scans are 3 specimens, each a raw scan and an ``_avizo`` export. Chrysalidina
    specimen 1 has 3 scans (``_scanB`` and ``_scanC`` turned by 30 and 75 degrees), so
    Chrysalidina has 16 scans of 14 specimens. Every other scan is its own specimen.

    Parameters
    ----------
    out_dir : pathlib.Path
        Folder to write into; created when missing.
    shape : tuple of int
        Volume shape (x, y, z) in voxels at ``BASE_VOXEL_MM`` voxels.
    seed : int
        Seed of every random choice; the same arguments give byte-identical files.

    Returns
    -------
    list of pathlib.Path
        The 97 written files, sorted.
    """
    if seed < 0:
        raise ValueError(f"seed={seed} must be 0 or more")
    shape = _check_shape(shape)
    return _write_plan(Path(out_dir), _original_plan(), shape, seed)


def _parse_shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) not in (1, 3) or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"invalid shape {text!r}; give one side such as 48 or three such as 48,48,32")
    sides = [int(p) for p in parts]
    return (sides[0],) * 3 if len(sides) == 1 else tuple(sides)


def main(argv: list[str] | None = None) -> int:
    """Write a synthetic collection from the command line and print where it went."""
    parser = argparse.ArgumentParser(
        prog="python -m tasks.synthetic",
        description="Write a synthetic collection of micro-CT scans of foraminifera as NIfTI files.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the scans into")
    parser.add_argument("--species", type=int, default=None, help="number of species, 1 to 27 (default 4)")
    parser.add_argument("--specimens", type=int, default=None, help="specimens per species (default 4)")
    parser.add_argument(
        "--shape",
        type=_parse_shape,
        default=None,
        help="volume side in voxels, or x,y,z (default 48, or 32 with --like-original)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--mixed", action="store_true", help="mix dtypes, .nii/.nii.gz and voxel sizes")
    parser.add_argument("--rescans", type=int, default=0, help="number of specimens with an extra scan (default 0)")
    parser.add_argument(
        "--like-original",
        action="store_true",
        help="write the original study's 27 species and 97 scans",
    )
    args = parser.parse_args(argv)

    if args.like_original:
        conflicting = args.species is not None or args.specimens is not None or args.mixed or args.rescans
        if conflicting:
            parser.error("--like-original fixes the collection; drop --species, --specimens, --mixed and --rescans")
    try:
        if args.like_original:
            paths = write_like_original(args.out_dir, shape=args.shape or (32, 32, 32), seed=args.seed)
        else:
            paths = write_collection(
                args.out_dir,
                n_species=4 if args.species is None else args.species,
                specimens_per_species=4 if args.specimens is None else args.specimens,
                shape=args.shape or (48, 48, 48),
                seed=args.seed,
                mixed=args.mixed,
                rescans=args.rescans,
            )
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {len(paths)} scans to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
