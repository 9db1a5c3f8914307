
WITH p AS MATERIALIZED (
    SELECT $1::text::pg_snapshot AS lo,
           $2::text::pg_snapshot AS hi,
           coalesce($3::text::pg_snapshot, pg_current_snapshot()) AS up,
           (SELECT pruned_below FROM rowcast.retention WHERE id = 1)::text AS pruned)
SELECT p.up::text, c.id, c.topics, c.event, c.payload, c.us, c.first, p.pruned, c.xid::text, c.got
FROM p LEFT JOIN LATERAL (
    SELECT l.*, count(*) OVER () AS got,
           sum(octet_length(l.payload)) OVER (ORDER BY l.first DESC, l.id ROWS UNBOUNDED PRECEDING) AS run
    FROM (
        SELECT x.id, x.xid, x.topics, x.event, x.payload::text AS payload,
               (extract(epoch FROM x.emitted_at) * 1000000)::int8 AS us,
               pg_visible_in_snapshot(x.xid, p.hi) AS first
        FROM (
            SELECT * FROM rowcast.changes
             WHERE xid >= pg_snapshot_xmax(p.lo) AND xid < pg_snapshot_xmax(p.up) 
            UNION ALL
            SELECT * FROM rowcast.changes
             WHERE xid = ANY (ARRAY(SELECT pg_snapshot_xip(p.lo))) 
        ) x
        WHERE pg_visible_in_snapshot(x.xid, p.up)
          AND (x.id > $4 OR NOT pg_visible_in_snapshot(x.xid, p.hi))
        ORDER BY first DESC, x.id
        LIMIT $5
    ) l
) c ON c.run - octet_length(c.payload) < $6
ORDER BY c.first DESC, c.id