"""Build the split folders beside the live ones and swap them in once the catalogue is committed.

A build writes its images into ``OUT/.staging/{train,val,test}``: new images
are rendered there and unchanged ones are hard-linked from the live folders.
Only after the catalogue of the build is committed are the staged folders
renamed over ``OUT/{train,val,test}``. So the live folders always hold one
complete build, and a build killed at any point never leaves a mix of two
builds, which could put one specimen in two splits.

The staging folder records its build id. The next build finishes an
interrupted swap when the catalogue records that build as succeeded, and
it discards the staged folders otherwise. ``status`` reports them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tasks.export import FILE_SUFFIX
from tasks.split import SPLITS

STAGING_FOLDER = ".staging"
RETIRED_FOLDER = ".retired"
BUILD_ID_FILE = "BUILD_ID"
IMAGE_SUFFIXES = frozenset(FILE_SUFFIX.values())


def staging_root(out_dir: Path) -> Path:
    """Return the folder where a build assembles its split folders."""
    return Path(out_dir) / STAGING_FOLDER


def staged_build_id(out_dir: Path) -> int | None:
    """Return the build id of a staging folder left in ``out_dir``, or None."""
    try:
        return int((staging_root(out_dir) / BUILD_ID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def recover(out_dir: Path, committed_build_id: int | None) -> str | None:
    """Finish or discard the swap of an interrupted build; return what was done, or None.

    ``committed_build_id`` is the latest successful build in the catalogue.
    Staged folders of that build are swapped in, because the catalogue
    already describes them. Staged folders of any other build are removed.
    """
    root = staging_root(out_dir)
    if not root.exists():
        shutil.rmtree(Path(out_dir) / RETIRED_FOLDER, ignore_errors=True)
        return None
    staged = staged_build_id(out_dir)
    if staged is not None and staged == committed_build_id:
        publish(out_dir)
        return f"finished swapping in the folders of build {staged}, which was interrupted after its catalogue was committed"
    discard(out_dir)
    return f"removed the staged folders of build {staged}, which did not finish"


def start(out_dir: Path, build_id: int) -> Path:
    """Create an empty staging folder for ``build_id`` and return it."""
    root = staging_root(out_dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / BUILD_ID_FILE).write_text(f"{build_id}\n")
    return root


def link_unchanged(out_dir: Path, relative: str) -> None:
    """Put the live image ``relative`` into the staging folder as a hard link (a copy where links fail)."""
    source = os.path.join(out_dir, relative)
    target = os.path.join(staging_root(out_dir), relative)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        os.makedirs(folder, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def removed_images(out_dir: Path, keep: set[str]) -> list[str]:
    """Return the live images (paths below ``out_dir``) that the staged build no longer has, sorted."""
    removed = []
    for split in SPLITS:
        for folder, _, names in os.walk(os.path.join(out_dir, split)):
            relative_folder = os.path.relpath(folder, out_dir).replace(os.sep, "/")
            for name in names:
                relative = f"{relative_folder}/{name}"
                if os.path.splitext(name)[1] in IMAGE_SUFFIXES and relative not in keep:
                    removed.append(relative)
    return sorted(removed)


def publish(out_dir: Path) -> None:
    """Swap the staged split folders in for the live ones, then remove the old ones.

    Each split is two renames: live to ``.retired`` and staged to live. A
    split the staged build has no images for loses its live folder.
    """
    out_dir = Path(out_dir)
    root = staging_root(out_dir)
    retired = out_dir / RETIRED_FOLDER
    retired.mkdir(exist_ok=True)
    for split in SPLITS:
        live, staged = out_dir / split, root / split
        if not staged.exists() and (retired / split).exists():
            # This split was already swapped before an interruption.
            continue
        if live.exists():
            shutil.rmtree(retired / split, ignore_errors=True)
            os.rename(live, retired / split)
        if staged.exists():
            os.rename(staged, live)
    # The staging folder goes first: while it exists, a recovery would take
    # the folders in .retired for unfinished work.
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(retired, ignore_errors=True)


def discard(out_dir: Path) -> None:
    """Remove the staging folder of a build that did not finish."""
    shutil.rmtree(staging_root(out_dir), ignore_errors=True)
    shutil.rmtree(Path(out_dir) / RETIRED_FOLDER, ignore_errors=True)
