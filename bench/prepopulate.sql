-- bench/prepopulate.sql — adds :n finished terminals straight into one rkl database, for
-- bench/run's scaling runs (the cost per terminal with 10,000 / 100,000 already stored).
-- Run with psql as the cluster superuser against rkl_kms, rkl_hsm_kms, rkl_hsm_mtms and
-- rkl_mtms in turn, with the services stopped:  -v n=<count> -v tag=<SN prefix>
-- Rows look like what a completed fleet leaves behind (terminal INSTALLED, its SN-TK_KMS row
-- with imported TEK/AUK, HSM #2 key records for TEK/AUK/TMK, audit rows on every side, MTMS
-- packages FORWARDED) so tables and indexes have the real shape and size. Key material is
-- random bytes that are never used; key indexes start at 10^12 so they can never meet an
-- index the HSM's own sequence hands out. The audit rows (HSMs, KMS, MTMS) carry random
-- MACs: the audit chains of a bench database do not verify past this point (bench only;
-- never do this to a real database).
\set ON_ERROR_STOP on
SELECT current_database() = 'rkl_kms' AS is_kms, current_database() = 'rkl_hsm_kms' AS is_hsm_kms,
       current_database() = 'rkl_hsm_mtms' AS is_hsm_mtms, current_database() = 'rkl_mtms' AS is_mtms,
       current_database() IN ('rkl_kms', 'rkl_hsm_kms', 'rkl_hsm_mtms', 'rkl_mtms') AS is_rkl,
       CASE WHEN current_database() LIKE 'rkl_hsm_%' THEN 'hsm_audit' ELSE 'audit' END
         AS audit_table,
       (extract(epoch FROM now()) * 1000)::bigint AS now_ms \gset
BEGIN;
-- The audit records every SN gets, in order (filled below by each database's part).
CREATE TEMPORARY TABLE sn_audit (i int, actor text, action text) ON COMMIT DROP;
\if :is_kms
SELECT greatest(coalesce(max(tmk_index), 0), 1000000000000) AS base FROM terminals \gset
INSERT INTO terminals (sn, state, algorithm, tmk_index, tmk_kcv, tmk_generation, created_at_ms,
                       installed_at_ms, updated_at_ms)
SELECT :'tag' || '-' || lpad(g::text, 7, '0'), 'INSTALLED', 17, :base + 3 * g,
       upper(left(md5(:'tag' || g || 'tmk'), 6)), 1, :now_ms, :now_ms, :now_ms
FROM generate_series(1, :n) g;
INSERT INTO sn_tk_kms (sn, ctk_pk, mtms_submission_id, received_at_ms, algorithm, tek_index,
                       tek_kcv, auk_index, auk_kcv, imported_at_ms)
SELECT :'tag' || '-' || lpad(g::text, 7, '0'),
       decode(repeat(md5(:'tag' || g), 4) || left(md5(g::text), 12), 'hex'),
       'prepopulated-' || g, :now_ms, 17, :base + 3 * g + 1,
       upper(left(md5(:'tag' || g || 'tek'), 6)), :base + 3 * g + 2,
       upper(left(md5(:'tag' || g || 'auk'), 6)), :now_ms
FROM generate_series(1, :n) g;
INSERT INTO sn_audit
VALUES (1, 'mtms', 'tk.receive'), (2, 'terminal', 'tk.import'), (3, 'terminal', 'auth.begin'),
       (4, 'terminal', 'auth.ok'), (5, 'terminal', 'tmk.deliver'), (6, 'terminal', 'tmk.installed');
\endif
\if :is_hsm_kms
SELECT greatest(coalesce(max(key_index), 0), 1000000000000) AS base FROM hsm_key \gset
INSERT INTO hsm_key (key_index, key_type, algorithm, usage, bound_sn, label, kcv, state,
                     created_at_ms, updated_at_ms, nonce, sealed)
SELECT :base + 3 * g + k.off, k.type, 17, k.usage, :'tag' || '-' || lpad(g::text, 7, '0'),
       k.name || '-' || :'tag' || '-' || g, upper(left(md5(:'tag' || g || k.name), 6)), 1,
       :now_ms, :now_ms, decode(left(md5(g || k.name), 24), 'hex'),
       decode(md5(:'tag' || g || k.name) || md5(k.name || g), 'hex')
FROM generate_series(1, :n) g,
     (VALUES (1, 4, 4, 'tek'), (2, 5, 5, 'auk'), (3, 6, 6, 'tmk')) k(off, type, usage, name);
INSERT INTO sn_audit
VALUES (1, 'kms', 'import_transport_key'), (2, 'kms', 'generate_tmk'),
       (3, 'kms', 'auth.challenge'), (4, 'kms', 'auth_verify'), (5, 'kms', 'export_key_block'),
       (6, 'kms', 'install.verify_proof');
\endif
\if :is_hsm_mtms
INSERT INTO sn_audit VALUES (1, 'mtms', 'tk.translate');
\endif
\if :is_mtms
SELECT serial_hex AS work_serial FROM work_keys ORDER BY created_at_ms DESC LIMIT 1 \gset
INSERT INTO sn_key_mtms (submission_id, sn, operator_id, nonce, package, signature,
                         operator_certificate_pem, operator_certificate_serial,
                         work_certificate_serial, ctk_pu, algorithm_code, created_at_ms,
                         received_at_ms, state, attempts, next_attempt_at_ms, forwarded_at_ms)
SELECT 'pre-' || :'tag' || '-' || g, :'tag' || '-' || lpad(g::text, 7, '0'), 'operator1',
       decode(md5(:'tag' || g || 'nonce'), 'hex'), decode(repeat(md5(g::text), 20), 'hex'),
       decode(repeat(md5(:'tag' || g), 4), 'hex'), 'prepopulated', 'PRE', :'work_serial',
       decode(repeat(md5(g || 'ctk'), 16), 'hex'), 17, :now_ms, :now_ms, 'FORWARDED', 1,
       :now_ms, :now_ms
FROM generate_series(1, :n) g;
INSERT INTO sn_audit
VALUES (1, 'operator:operator1', 'package.receive'), (2, 'mtms', 'package.forward');
\endif
\if :is_rkl
SELECT coalesce(max(seq), 0) AS seq0, (SELECT count(*) FROM sn_audit) AS per_sn
FROM :"audit_table" \gset
INSERT INTO :"audit_table" (seq, at_ms, actor, action, sn, detail, result, mac)
SELECT :seq0 + :per_sn * (g - 1) + a.i, :now_ms, a.actor, a.action,
       :'tag' || '-' || lpad(g::text, 7, '0'), 'prepopulated by bench/run', 'OK',
       decode(md5(g || a.action) || md5(a.action || g), 'hex')
FROM generate_series(1, :n) g, sn_audit a;
\endif
COMMIT;
