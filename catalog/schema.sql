-- Tables of the fossil-slices catalogue. Every table that changes per build
-- carries build_id, so earlier builds stay queryable; the views in views.sql
-- show the latest successful build.

CREATE TABLE catalogue_meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

CREATE TABLE builds (
    build_id          INTEGER PRIMARY KEY,
    started_at        TIMESTAMP NOT NULL,
    finished_at       TIMESTAMP,
    status            VARCHAR NOT NULL,      -- succeeded | failed
    message           VARCHAR,               -- why a build failed
    code_version      VARCHAR NOT NULL,
    analysis_hash     VARCHAR NOT NULL,      -- hash of the parameters the analysis depends on
    params            VARCHAR NOT NULL,      -- the whole configuration as JSON
    scans_dir         VARCHAR NOT NULL,
    dataset_hash      VARCHAR,               -- SHA-256 over the manifest lines
    scans_seen        INTEGER,
    scans_added       INTEGER,
    scans_changed     INTEGER,
    scans_removed     INTEGER,
    analyses_run      INTEGER,
    analyses_cached   INTEGER,
    images_total      INTEGER,
    images_written    INTEGER,
    images_unchanged  INTEGER,
    images_removed    INTEGER,
    leakage_check     VARCHAR                -- passed | failed: reason
);

CREATE TABLE scan_history (
    build_id            INTEGER NOT NULL,
    relative_path       VARCHAR NOT NULL,    -- path below the scans folder
    scan_hash           VARCHAR,             -- SHA-256 of the file; NULL for unparsed names
    file_name           VARCHAR NOT NULL,
    species             VARCHAR,
    specimen            VARCHAR,
    variant             VARCHAR,
    size_bytes          BIGINT,
    change              VARCHAR NOT NULL,    -- added | changed | unchanged | removed
    status              VARCHAR NOT NULL,    -- analysed | degenerate | corrupt | unsupported | failed | unparsed | duplicate | excluded | removed
    reason              VARCHAR,
    warnings            VARCHAR,
    shape_x             INTEGER,             -- canonical (RAS), isotropic shape analysed
    shape_y             INTEGER,
    shape_z             INTEGER,
    voxel_size          DOUBLE,              -- in the file's spatial unit (usually mm)
    source_shape        VARCHAR,
    source_dtype        VARCHAR,
    source_orientation  VARCHAR,
    resampled           BOOLEAN,
    clip_low            DOUBLE,              -- intensity mapped to 0
    clip_high           DOUBLE,              -- intensity mapped to 1
    threshold           DOUBLE,              -- on the normalised 0..1 scale
    threshold_method    VARCHAR,
    nonfinite_voxels    BIGINT,
    mask_voxels         BIGINT,
    n_slices            INTEGER,
    n_passing           INTEGER,
    params_hash         VARCHAR,
    analysis_cached     BOOLEAN,
    PRIMARY KEY (build_id, relative_path)
);

-- One row per slice of each stored scan analysis, keyed by content hash so
-- that renaming a file changes nothing here. (scan_hash, params_hash, view,
-- slice_index) is unique because the writer stores each analysis once; it
-- has no PRIMARY KEY index, which at 2 million rows tripled the insert time
-- and added a third to the file (catalogue version 2).
CREATE TABLE slice_rows (
    scan_hash       VARCHAR NOT NULL,
    params_hash     VARCHAR NOT NULL,
    code_version    VARCHAR NOT NULL,
    view            VARCHAR NOT NULL,        -- axis0 | axis1 | axis2 | oblique-<plane>-<angle>
    plane           VARCHAR NOT NULL,
    angle_deg       SMALLINT NOT NULL,
    slice_index     INTEGER NOT NULL,
    height          INTEGER NOT NULL,
    width           INTEGER NOT NULL,
    mask_pixels     BIGINT NOT NULL,
    area_fraction   DOUBLE NOT NULL,
    intensity_mean  DOUBLE,
    intensity_std   DOUBLE,
    intensity_min   DOUBLE,
    intensity_max   DOUBLE,
    sharpness       DOUBLE NOT NULL,
    bbox_row0       INTEGER,
    bbox_row1       INTEGER,
    bbox_col0       INTEGER,
    bbox_col1       INTEGER,
    n_components    INTEGER NOT NULL,
    passed          BOOLEAN NOT NULL,
    reason          VARCHAR
);

CREATE TABLE species_history (
    build_id          INTEGER NOT NULL,
    species           VARCHAR NOT NULL,
    scans             INTEGER NOT NULL,
    specimens         INTEGER NOT NULL,
    usable_specimens  INTEGER NOT NULL,
    included          BOOLEAN NOT NULL,
    reason            VARCHAR NOT NULL,
    split_note        VARCHAR,
    PRIMARY KEY (build_id, species)
);

CREATE TABLE split_history (
    build_id        INTEGER NOT NULL,
    species         VARCHAR NOT NULL,
    specimen        VARCHAR NOT NULL,
    split           VARCHAR NOT NULL,        -- train | val | test
    passing_slices  INTEGER NOT NULL,
    assigned_in     INTEGER NOT NULL,        -- build that first placed the specimen in this split
    PRIMARY KEY (build_id, species, specimen)
);

CREATE TABLE export_history (
    build_id      INTEGER NOT NULL,
    scan_hash     VARCHAR NOT NULL,
    view          VARCHAR NOT NULL,
    slice_index   INTEGER NOT NULL,
    species       VARCHAR NOT NULL,
    specimen      VARCHAR NOT NULL,
    split         VARCHAR NOT NULL,
    priority      BIGINT NOT NULL,           -- rank of the slice in its species and split
    status        VARCHAR NOT NULL,          -- written | unchanged | dropped
    reason        VARCHAR,
    file          VARCHAR,                   -- path below the output folder
    sha256        VARCHAR,
    export_key    VARCHAR NOT NULL,          -- hash of what the image depends on
    PRIMARY KEY (build_id, scan_hash, view, slice_index, split)
);
