
WITH p AS MATERIALIZED (
    SELECT $1::text::pg_snapshot AS lo,
           $2::text::pg_snapshot AS hi,
           coalesce($3::text::pg_snapshot, pg_current_snapshot()) AS up,
           r.pruned_below::text AS pruned,
           r.lost_before::text AS lost
      FROM rowcast.retention r)
SELECT p.up::text, c.id, c.topics, c.event, c.payload, c.us, c.first, p.pruned, c.xid::text, NULL::int8, c.tx, p.lost
FROM p LEFT JOIN LATERAL (
    SELECT x.id, x.xid, x.topics, x.event, x.payload::text AS payload,
               (extract(epoch FROM x.emitted_at) * 1000000)::int8 AS us,
               pg_visible_in_snapshot(x.xid, p.hi) AS first, coalesce(x.tx, x.xid)::text AS tx
    FROM rowcast.changes x
    WHERE (xid >= pg_snapshot_xmax(p.lo) AND xid < pg_snapshot_xmax(p.up) OR xid = ANY (ARRAY(SELECT pg_snapshot_xip(p.lo))))
      AND pg_visible_in_snapshot(x.xid, p.up)
          AND (x.id > $4 OR NOT pg_visible_in_snapshot(x.xid, p.hi))
        ORDER BY first DESC, x.id
        LIMIT $5
) c ON true
ORDER BY c.first DESC, c.id