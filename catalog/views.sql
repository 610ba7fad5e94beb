-- Views over the latest successful build. Recreated on every write.

CREATE OR REPLACE VIEW latest_build AS
SELECT * FROM builds WHERE status = 'succeeded' ORDER BY build_id DESC LIMIT 1;

CREATE OR REPLACE VIEW scans AS
SELECT * EXCLUDE (build_id) FROM scan_history
WHERE build_id = (SELECT build_id FROM latest_build) AND change <> 'removed';

CREATE OR REPLACE VIEW species AS
SELECT * EXCLUDE (build_id) FROM species_history
WHERE build_id = (SELECT build_id FROM latest_build);

CREATE OR REPLACE VIEW splits AS
SELECT * EXCLUDE (build_id) FROM split_history
WHERE build_id = (SELECT build_id FROM latest_build);

CREATE OR REPLACE VIEW exports AS
SELECT * EXCLUDE (build_id) FROM export_history
WHERE build_id = (SELECT build_id FROM latest_build);

CREATE OR REPLACE VIEW exported_files AS
SELECT * FROM exports WHERE status <> 'dropped';

CREATE OR REPLACE VIEW slices AS
SELECT
    c.species,
    c.specimen,
    c.relative_path,
    s.*,
    e.split,
    e.file IS NOT NULL AS selected,
    e.file,
    e.sha256 AS file_sha256
FROM slice_rows AS s
JOIN scans AS c USING (scan_hash, params_hash)
LEFT JOIN exported_files AS e USING (scan_hash, view, slice_index);

CREATE OR REPLACE VIEW specimens AS
SELECT
    c.species,
    c.specimen,
    count(DISTINCT c.scan_hash) AS scans,
    sp.split,
    coalesce(sum(c.n_passing), 0)::BIGINT AS passing_slices,
    (SELECT count(*) FROM exported_files AS e
      WHERE e.species = c.species AND e.specimen = c.specimen) AS selected_slices
FROM scans AS c
LEFT JOIN splits AS sp USING (species, specimen)
WHERE c.species IS NOT NULL
GROUP BY c.species, c.specimen, sp.split;

CREATE OR REPLACE VIEW split_counts AS
SELECT species, split, count(*) AS images
FROM exported_files
GROUP BY species, split;

-- Slices that were selected but whose image came out empty, so the export
-- dropped them. They show here with their reason, not as unselected slices.
CREATE OR REPLACE VIEW dropped_slices AS
SELECT scan_hash, view, slice_index, species, specimen, split, reason
FROM exports WHERE status = 'dropped';

-- Earlier builds: the same questions with a build_id column. Only the
-- analyses of the latest build's scans keep their slice rows, so the history
-- views stop at the specimen and image level.

CREATE OR REPLACE VIEW build_splits AS
SELECT
    sp.build_id,
    sp.species,
    sp.specimen,
    sp.split,
    sp.assigned_in,
    sp.passing_slices,
    coalesce(sc.scans, 0) AS scans,
    coalesce(ex.selected_slices, 0) AS selected_slices
FROM split_history AS sp
LEFT JOIN (
    SELECT build_id, species, specimen, count(DISTINCT scan_hash) AS scans
    FROM scan_history WHERE change <> 'removed' AND scan_hash IS NOT NULL
    GROUP BY ALL
) AS sc USING (build_id, species, specimen)
LEFT JOIN (
    SELECT build_id, species, specimen, count(*) AS selected_slices
    FROM export_history WHERE status <> 'dropped'
    GROUP BY ALL
) AS ex USING (build_id, species, specimen);

CREATE OR REPLACE VIEW build_exports AS
SELECT e.*, e.status <> 'dropped' AS selected, b.status AS build_status
FROM export_history AS e
JOIN builds AS b USING (build_id);

CREATE OR REPLACE VIEW build_split_counts AS
SELECT build_id, species, split, count(*) AS images
FROM export_history WHERE status <> 'dropped'
GROUP BY ALL;

-- The scan content hashes of each specimen in each build, with its split:
-- what the leakage questions between two builds compare.
CREATE OR REPLACE VIEW build_scan_splits AS
SELECT DISTINCT c.build_id, c.species, c.specimen, sp.split, c.scan_hash, c.relative_path
FROM scan_history AS c
JOIN split_history AS sp USING (build_id, species, specimen)
WHERE c.scan_hash IS NOT NULL AND c.change <> 'removed';

-- Common questions about the latest build.

CREATE OR REPLACE VIEW species_summary AS
WITH scan_counts AS (
    SELECT species,
           count(DISTINCT specimen) AS specimens,
           count(*) AS scans,
           count(*) FILTER (WHERE status = 'analysed') AS analysed_scans,
           coalesce(sum(n_slices), 0)::BIGINT AS slices,
           coalesce(sum(n_passing), 0)::BIGINT AS passing_slices
    FROM scans WHERE species IS NOT NULL
    GROUP BY species
),
selected AS (
    SELECT species,
           count(*) FILTER (WHERE split = 'train') AS train_slices,
           count(*) FILTER (WHERE split = 'val') AS val_slices,
           count(*) FILTER (WHERE split = 'test') AS test_slices,
           count(*) AS selected_slices
    FROM exported_files
    GROUP BY species
)
SELECT
    sp.species,
    sp.included,
    sp.reason,
    coalesce(c.specimens, sp.specimens) AS specimens,
    coalesce(c.scans, sp.scans) AS scans,
    coalesce(c.analysed_scans, 0) AS analysed_scans,
    coalesce(c.slices, 0) AS slices,
    coalesce(c.passing_slices, 0) AS passing_slices,
    coalesce(s.train_slices, 0) AS train_slices,
    coalesce(s.val_slices, 0) AS val_slices,
    coalesce(s.test_slices, 0) AS test_slices,
    coalesce(s.selected_slices, 0) AS selected_slices
FROM species AS sp
LEFT JOIN scan_counts AS c USING (species)
LEFT JOIN selected AS s USING (species);

-- Each distinct analysis once per specimen: two files with the same content
-- are one scan's slices, not two.
CREATE OR REPLACE VIEW specimen_views AS
WITH analyses AS (
    SELECT DISTINCT species, specimen, scan_hash, params_hash
    FROM scans WHERE status = 'analysed'
),
measured AS (
    SELECT a.species, a.specimen, s.view,
           count(DISTINCT s.scan_hash) AS scans,
           count(*) AS slices,
           count(*) FILTER (WHERE s.passed) AS passing_slices
    FROM slice_rows AS s
    JOIN analyses AS a USING (scan_hash, params_hash)
    GROUP BY ALL
),
selected AS (
    SELECT species, specimen, view, count(*) AS selected_slices
    FROM exported_files
    GROUP BY ALL
)
SELECT m.species, m.specimen, sp.split, m.view, m.scans, m.slices, m.passing_slices,
       coalesce(s.selected_slices, 0) AS selected_slices
FROM measured AS m
LEFT JOIN splits AS sp USING (species, specimen)
LEFT JOIN selected AS s USING (species, specimen, view);

-- The reason text carries the measured area ("mask area 0.0103 below 0.02"),
-- so reason_kind groups those into one kind.
CREATE OR REPLACE VIEW rejected_slices AS
WITH analyses AS (
    SELECT species, specimen, relative_path, scan_hash, params_hash
    FROM scans WHERE status = 'analysed'
)
SELECT a.species, a.specimen, a.relative_path, a.scan_hash,
       CASE WHEN s.reason LIKE 'mask area % below %' THEN 'mask area below min_area_fraction'
            ELSE s.reason END AS reason_kind,
       count(*) AS slices,
       min(s.area_fraction) AS lowest_area_fraction,
       max(s.area_fraction) AS highest_area_fraction
FROM slice_rows AS s
JOIN analyses AS a USING (scan_hash, params_hash)
WHERE NOT s.passed
GROUP BY ALL;

-- Slices whose mask area is closest to the latest build's min_area_fraction,
-- nearest first: the ones a change of that parameter would move.
CREATE OR REPLACE VIEW near_threshold AS
WITH threshold AS (
    SELECT CAST(json_extract_string(params, '$.min_area_fraction') AS DOUBLE) AS min_area_fraction
    FROM latest_build
),
analyses AS (
    SELECT DISTINCT species, specimen, scan_hash, params_hash
    FROM scans WHERE status = 'analysed'
)
SELECT a.species, a.specimen, s.scan_hash, s.view, s.slice_index, s.area_fraction,
       t.min_area_fraction,
       s.area_fraction - t.min_area_fraction AS margin,
       s.passed,
       e.file IS NOT NULL AS selected,
       e.split
FROM slice_rows AS s
JOIN analyses AS a USING (scan_hash, params_hash)
CROSS JOIN threshold AS t
LEFT JOIN exported_files AS e USING (scan_hash, view, slice_index)
WHERE s.mask_pixels > 0
ORDER BY abs(s.area_fraction - t.min_area_fraction), s.scan_hash, s.view, s.slice_index;
