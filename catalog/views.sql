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
    coalesce(sum(c.n_passing), 0) AS passing_slices,
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
