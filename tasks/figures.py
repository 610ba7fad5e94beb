"""Figures of the build report: contact sheets, image counts and area fractions, as PNG bytes.

Every function here is pure: arrays and records in, PNG bytes out. The
drawing uses OpenCV only, with fixed fonts, sizes and PNG compression, so the
same input always gives the same bytes.
"""

from __future__ import annotations

import math
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from tasks.export import decode_image
from tasks.split import SPLITS

# Colours are BGR, as OpenCV draws and encodes them.
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (160, 160, 160)
LIGHT_GREY = (225, 225, 225)
SPLIT_COLOURS = {"train": (180, 119, 31), "val": (14, 127, 255), "test": (44, 160, 44)}
PASSING_COLOUR = (44, 160, 44)
REJECTED_COLOUR = (40, 39, 214)

FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_SCALE = 0.45
TITLE_SCALE = 0.6
PNG_COMPRESSION = 6  # fixed, so the bytes depend on the pixels alone


@dataclass(frozen=True)
class SheetLayout:
    """Pixel sizes of a contact sheet.

    Attributes
    ----------
    tile : int
        Side of one square image tile.
    columns : int
        Tiles per row, the maximum number of images shown per species.
    label_width : int
        Width of the species label column on the left.
    caption_height : int
        Height of the specimen caption under each tile.
    gap : int
        Space between tiles and around the sheet.
    title_height : int
        Height of the title band at the top.
    """

    tile: int = 112
    columns: int = 8
    label_width: int = 150
    caption_height: int = 16
    gap: int = 4
    title_height: int = 30

    @property
    def row_height(self) -> int:
        """Height of one species row: tile, caption and gap."""
        return self.tile + self.caption_height + self.gap

    def shape(self, rows: int) -> tuple[int, int, int]:
        """Return the (height, width, 3) of a sheet with `rows` species rows."""
        height = self.title_height + rows * self.row_height + self.gap
        width = self.label_width + self.columns * (self.tile + self.gap) + self.gap
        return height, width, 3


# ---------------------------------------------------------------- helpers


def encode_png(canvas: np.ndarray) -> bytes:
    """Encode a uint8 BGR canvas of shape (rows, cols, 3) as PNG bytes."""
    ok, buffer = cv2.imencode(".png", canvas, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed to encode a figure of shape {canvas.shape} as PNG")
    return buffer.tobytes()


def caption_text(text: str) -> str:
    """Return `text` in the ASCII that OpenCV's Hershey fonts can draw.

    Accents are dropped ("Globigerinoïdes" becomes "Globigerinoides"). A
    character with no ASCII base letter becomes "?"; report.html shows the
    name in full.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    base = "".join(character for character in decomposed if not unicodedata.combining(character))
    return base.encode("ascii", "replace").decode()


def _fit_text(text: str, width: int, scale: float = TEXT_SCALE) -> str:
    """Shorten `text` with a trailing '..' until it fits `width` pixels."""
    if cv2.getTextSize(text, FONT, scale, 1)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "..", FONT, scale, 1)[0][0] > width:
        text = text[:-1]
    return text + ".."


def _put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], *, scale: float = TEXT_SCALE,
              colour=BLACK, width: int | None = None) -> None:
    """Draw `text` with its baseline's left end at `origin` (x, y), cut to `width` pixels."""
    text = caption_text(text)
    if width is not None:
        text = _fit_text(text, width, scale)
    cv2.putText(canvas, text, origin, FONT, scale, colour, 1, cv2.LINE_AA)


def _text_width(text: str, scale: float = TEXT_SCALE) -> int:
    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def nice_step(largest: float, ticks: int = 5) -> float:
    """Return a tick step of 1, 2 or 5 times a power of ten giving at most about `ticks` ticks.

    Examples
    --------
    >>> nice_step(1234)
    500.0
    >>> nice_step(0)
    1.0
    """
    # An empty axis still needs a positive step.
    if largest <= 0:
        return 1.0
    raw = largest / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if raw <= factor * power:
            return factor * power
    return 10.0 * power


# ---------------------------------------------------------------- contact sheets


def preview_pixels(data: bytes, fmt: str) -> np.ndarray:
    """Decode an exported image file into 8-bit grey pixels for a contact sheet.

    Parameters
    ----------
    data : bytes
        Content of a file written by :func:`tasks.export.encode_image`.
    fmt : str
        ``png``, ``png16`` or ``npy``.

    Returns
    -------
    numpy.ndarray
        uint8 array of shape (rows, cols).
    """
    pixels = decode_image(data, fmt)
    if pixels.ndim == 3:
        pixels = pixels[..., 0]  # the three channels are equal
    if pixels.dtype == np.uint16:
        return np.rint(pixels / 257.0).astype(np.uint8)
    if pixels.dtype != np.uint8:
        return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    return pixels


def _spread(items: list, count: int) -> list:
    """Return `count` items at evenly spaced positions of `items`, in order."""
    return [items[(2 * k + 1) * len(items) // (2 * count)] for k in range(count)]


def sample_images(rows: Iterable[Mapping], per_species: int) -> dict[str, list[Mapping]]:
    """Choose up to `per_species` images of each species, spread over its specimens.

    Specimens take turns in sorted order, so each gets an image before any gets
    a second. Within a specimen the images are taken at evenly spaced positions
    of its files sorted by name, which spreads them over views and slices.

    Parameters
    ----------
    rows : iterable of mapping
        One per image, with ``species``, ``specimen`` and ``file``.
    per_species : int
        Maximum number of images per species.

    Returns
    -------
    dict
        {species: chosen rows}, species sorted, rows sorted by specimen and file.
    """
    files: dict[str, dict[str, list[Mapping]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        files[row["species"]][row["specimen"]].append(row)

    chosen = {}
    for species in sorted(files):
        specimens = {name: sorted(items, key=lambda row: row["file"]) for name, items in files[species].items()}
        quota = dict.fromkeys(specimens, 0)
        remaining = min(per_species, sum(len(items) for items in specimens.values()))
        while remaining:
            for name in sorted(specimens):
                if remaining and quota[name] < len(specimens[name]):
                    quota[name] += 1
                    remaining -= 1
        chosen[species] = [row for name in sorted(specimens) for row in _spread(specimens[name], quota[name])]
    return chosen


def contact_sheet(title: str, rows: Mapping[str, Sequence[tuple[str, np.ndarray]]],
                  layout: SheetLayout = SheetLayout()) -> bytes:
    """Draw a grid with one row per species of sample images captioned with their specimen.

    Parameters
    ----------
    title : str
        Text of the title band, for example the split name.
    rows : mapping
        {species: [(specimen, pixels), ...]} in display order. ``pixels`` is a
        uint8 array of shape (rows, cols); only the first ``layout.columns``
        images of a species are drawn.
    layout : SheetLayout
        Pixel sizes.

    Returns
    -------
    bytes
        PNG of shape ``layout.shape(len(rows))``.
    """
    canvas = np.full(layout.shape(len(rows)), 255, dtype=np.uint8)
    _put_text(canvas, title, (layout.gap, layout.title_height - 10), scale=TITLE_SCALE, width=canvas.shape[1])

    for row_number, (species, images) in enumerate(rows.items()):
        top = layout.title_height + row_number * layout.row_height
        _put_text(canvas, species, (layout.gap, top + layout.tile // 2), width=layout.label_width - 2 * layout.gap)
        _put_text(canvas, f"{len(images)} shown", (layout.gap, top + layout.tile // 2 + 18), colour=GREY,
                  width=layout.label_width - 2 * layout.gap)
        for column, (specimen, pixels) in enumerate(images[: layout.columns]):
            left = layout.label_width + column * (layout.tile + layout.gap)
            tile = cv2.resize(pixels, (layout.tile, layout.tile), interpolation=cv2.INTER_AREA)
            canvas[top : top + layout.tile, left : left + layout.tile] = tile[..., None]
            _put_text(canvas, specimen, (left, top + layout.tile + layout.caption_height - 4), scale=0.4,
                      width=layout.tile)
    return encode_png(canvas)


# ---------------------------------------------------------------- image counts


def counts_chart(table: Mapping[str, Mapping[str, int]], *, label_width: int = 150, plot_width: int = 520,
                 bar_height: int = 14) -> bytes:
    """Draw horizontal grouped bars of the images per species and split.

    Parameters
    ----------
    table : mapping
        {species: {split: images}}, as :func:`tasks.report.count_table` returns.
    label_width, plot_width, bar_height : int
        Pixel sizes of the species column, the bar area and one bar.

    Returns
    -------
    bytes
        PNG of a BGR image, one group of ``len(SPLITS)`` bars per species.
    """
    group = len(SPLITS) * bar_height + 12
    top, bottom = 50, 30
    width = label_width + plot_width + 70
    canvas = np.full((top + max(1, len(table)) * group + bottom, width, 3), 255, dtype=np.uint8)
    _put_text(canvas, "Images per species and split", (6, 20), scale=TITLE_SCALE)
    legend_x = 6
    for split in SPLITS:
        cv2.rectangle(canvas, (legend_x, 30), (legend_x + 12, 42), SPLIT_COLOURS[split], cv2.FILLED)
        _put_text(canvas, split, (legend_x + 16, 41))
        legend_x += 26 + _text_width(split)

    largest = max((count for row in table.values() for count in row.values()), default=0)
    step = nice_step(largest)
    axis_max = step * max(1, math.ceil(largest / step))
    axis_bottom = canvas.shape[0] - bottom
    for tick in np.arange(0, axis_max + step / 2, step):
        x = label_width + round(plot_width * tick / axis_max)
        cv2.line(canvas, (x, top - 4), (x, axis_bottom), LIGHT_GREY, 1)
        _put_text(canvas, f"{tick:g}", (x - _text_width(f"{tick:g}", 0.4) // 2, axis_bottom + 16), scale=0.4)

    for number, (species, row) in enumerate(table.items()):
        y = top + number * group
        _put_text(canvas, species, (6, y + group // 2 + 2), width=label_width - 12)
        for position, split in enumerate(SPLITS):
            bar_top = y + position * bar_height
            length = round(plot_width * row.get(split, 0) / axis_max)
            cv2.rectangle(canvas, (label_width, bar_top), (label_width + length, bar_top + bar_height - 2),
                          SPLIT_COLOURS[split], cv2.FILLED)
            _put_text(canvas, str(row.get(split, 0)), (label_width + length + 4, bar_top + bar_height - 3),
                      scale=0.4)
    cv2.line(canvas, (label_width, top - 4), (label_width, axis_bottom), BLACK, 1)
    return encode_png(canvas)


# ---------------------------------------------------------------- area fractions


def _log_height(count: np.ndarray, largest: int, height: int) -> np.ndarray:
    # Slices outside the object pile up at 0, so a linear axis would hide the rest.
    return np.rint(height * np.log10(1 + count) / math.log10(1 + max(largest, 1))).astype(int)


def _histogram_panel(canvas: np.ndarray, top: int, species: str, fractions: np.ndarray, passed: np.ndarray,
                     edges: np.ndarray, threshold: float, plot: tuple[int, int, int]) -> None:
    """Draw one species' panel: passing and rejected slices per area-fraction bin."""
    left, width, height = plot
    passing, _ = np.histogram(fractions[passed], bins=edges)
    rejected, _ = np.histogram(fractions[~passed], bins=edges)
    largest = int(max(passing.max(initial=0), rejected.max(initial=0)))
    base = top + 22 + height
    _put_text(canvas, f"{species}: {int(passed.sum())} passing, {int((~passed).sum())} rejected slices",
              (left, top + 14), width=width)
    bin_width = width / (len(edges) - 1)
    for counts, colour, offset in ((rejected, REJECTED_COLOUR, 0.0), (passing, PASSING_COLOUR, 0.5)):
        # Each bin gets two half-width bars, so neither class hides the other.
        for index, bar in enumerate(_log_height(counts, largest, height)):
            if bar > 0:
                x0 = left + round((index + offset) * bin_width)
                x1 = max(x0, left + round((index + offset + 0.5) * bin_width) - 1)
                cv2.rectangle(canvas, (x0, base - bar), (x1, base), colour, cv2.FILLED)
    x = left + round(width * (threshold - edges[0]) / (edges[-1] - edges[0]))
    for y in range(top + 22, base, 6):
        cv2.line(canvas, (x, y), (x, min(y + 3, base)), BLACK, 1)
    cv2.line(canvas, (left, base), (left + width, base), BLACK, 1)
    _put_text(canvas, f"max {largest}", (left + width + 4, top + 32), scale=0.4, colour=GREY)


def area_fraction_histogram(species: Sequence[str], area_fraction: np.ndarray, passed: np.ndarray,
                            threshold: float, *, bins: int = 50, plot_width: int = 500,
                            plot_height: int = 70) -> bytes:
    """Draw per-species histograms of slice area fraction, passing and rejected slices side by side.

    Parameters
    ----------
    species : sequence of str
        Species of each slice, length n.
    area_fraction : numpy.ndarray
        Mask area / slice area of each slice, shape (n,), in [0, 1].
    passed : numpy.ndarray
        Whether each slice passed the checks, bool of shape (n,).
    threshold : float
        The build's ``min_area_fraction``, drawn as a dashed line.
    bins : int
        Number of equal bins from 0 to the largest area fraction (rounded up
        to a tenth).
    plot_width, plot_height : int
        Pixel size of one species' plot.

    Returns
    -------
    bytes
        PNG with one panel per species, sorted by name; bar heights are
        log10(1 + slices), scaled to each panel's largest bin.
    """
    names = np.asarray(species, dtype=object)
    fractions = np.asarray(area_fraction, dtype=np.float64)
    passed = np.asarray(passed, dtype=bool)
    if not (len(names) == fractions.shape[0] == passed.shape[0]):
        raise ValueError(f"species, area_fraction and passed must have one length, got {len(names)}, "
                         f"{fractions.shape[0]} and {passed.shape[0]}")
    upper = max(0.1, math.ceil(10 * float(np.nanmax(fractions, initial=0.0))) / 10)
    edges = np.linspace(0.0, upper, bins + 1)
    left, panel = 10, plot_height + 30
    ordered = sorted(set(names))
    canvas = np.full((60 + max(1, len(ordered)) * panel + 24, left + plot_width + 80, 3), 255, dtype=np.uint8)

    _put_text(canvas, "Slice area fraction (bar height: log10 of 1 + slices)", (left, 20), scale=TITLE_SCALE)
    cv2.rectangle(canvas, (left, 30), (left + 12, 42), PASSING_COLOUR, cv2.FILLED)
    _put_text(canvas, "passing", (left + 16, 41))
    cv2.rectangle(canvas, (left + 90, 30), (left + 102, 42), REJECTED_COLOUR, cv2.FILLED)
    _put_text(canvas, "rejected", (left + 106, 41))
    _put_text(canvas, f"dashed: min area {threshold:g}", (left + 190, 41), colour=GREY)
    for number, name in enumerate(ordered):
        chosen = names == name
        _histogram_panel(canvas, 50 + number * panel, str(name), fractions[chosen], passed[chosen], edges,
                         threshold, (left, plot_width, plot_height))

    axis_y = canvas.shape[0] - 8
    for tick in np.arange(0.0, upper + 1e-9, nice_step(upper)):
        x = left + round(plot_width * tick / upper)
        _put_text(canvas, f"{tick:g}", (x, axis_y), scale=0.4)
    return encode_png(canvas)
