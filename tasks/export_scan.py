"""Write the selected slice images of one scan.

The build settles images that an earlier build already wrote before it calls
this, so the scan's volume is rebuilt from the file and its stored analysis
only for images that are new or changed. A request whose target file already
contains the recorded bytes is still reported as unchanged without a render.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tasks.export import RenderParams, encode_image, render_slice, write_atomic
from tasks.oblique import extract_slice
from tasks.scan_analysis import load_masked_volume


def file_sha256(path: Path) -> str | None:
    """Return the SHA-256 of a file, or None when it does not exist."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def export_scan(scan_path: str, summary: dict, requests: list[dict], out_dir: str, render: dict,
                image_format: str, tiff_voxel_size) -> list[dict]:
    """Render and write the requested slices of one scan.

    Parameters
    ----------
    scan_path : str
        The scan file.
    summary : dict
        The scan's analysis summary (clip values and mask file).
    requests : list of dict
        One per slice: ``view``, ``slice_index``, ``file`` (path below
        ``out_dir``) and ``previous_sha256`` (the bytes an earlier build wrote
        for the same export key, or None).
    out_dir : str
        The output folder.
    render : dict
        Keyword arguments of :class:`tasks.export.RenderParams`.
    image_format : str
        ``png``, ``png16`` or ``npy``.

    Returns
    -------
    list of dict
        Per request: ``status`` (``written``, ``unchanged`` or ``dropped``),
        ``reason`` and ``sha256``.
    """
    results: list[dict | None] = [None] * len(requests)
    pending = []
    for position, request in enumerate(requests):
        target = Path(out_dir) / request["file"]
        previous = request.get("previous_sha256")
        if previous and file_sha256(target) == previous:
            results[position] = {"status": "unchanged", "reason": None, "sha256": previous}
        else:
            pending.append(position)
    if not pending:
        return results

    params = RenderParams(**render)
    volume, mask = load_masked_volume(scan_path, summary, tiff_voxel_size)
    for position in pending:
        request = requests[position]
        image, plane_mask = extract_slice(volume, mask, request["view"], request["slice_index"])
        rendered = render_slice(image, plane_mask, params)
        if rendered.image is None:
            results[position] = {"status": "dropped", "reason": rendered.reason, "sha256": None}
            continue
        data = encode_image(rendered.image, image_format)
        # The flow syncs the file system once after the export, before the
        # catalogue that lists these images is swapped in.
        written = write_atomic(Path(out_dir) / request["file"], data, durable=False)
        results[position] = {
            "status": "written" if written else "unchanged",
            "reason": None,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    return results
