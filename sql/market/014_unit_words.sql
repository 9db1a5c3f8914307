-- Units in the customer's messages ("Only 3 lbs available"), worded better.
--
-- 004_carts' market.unit_for added an "s" by rule, so a product sold by the
-- "lbs" read "Only 1 lbs available", one sold by the "LB" read "2 LBs", and
-- "loaf", "leaf", "potato" became "loafs", "leafs", "potatos". Now: "lbs"
-- is "lb" for one; an all-capitals unit gets a capital ending; the -f/-fe
-- nouns and the -o nouns a market sells by take -ves and -es (a list: "kilo"
-- and "taco" stay regular). The storefront's qtyText (web/demo/common.js)
-- spells them the same way. Apps with other units or languages replace this
-- function, as before.

CREATE OR REPLACE FUNCTION market.unit_for(unit text, qty numeric) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN unit = upper(unit) AND unit <> lower(unit) THEN upper(w)
        ELSE w
    END
    FROM (SELECT CASE
        WHEN unit = '' THEN unit
        WHEN qty = 1 THEN CASE WHEN lower(unit) = 'lbs' THEN left(unit, -1) ELSE unit END
        WHEN lower(unit) = 'lb' THEN unit || 's'
        WHEN lower(unit) IN ('lbs', 'oz', 'g', 'kg', 'mg', 'l', 'ml', 'dozen', 'each', 'ea', 'pcs')
            THEN unit
        WHEN lower(unit) IN ('loaf', 'leaf', 'half', 'calf', 'shelf', 'sheaf') THEN left(unit, -1) || 'ves'
        WHEN lower(unit) IN ('knife', 'life') THEN left(unit, -2) || 'ves'
        WHEN lower(unit) IN ('potato', 'tomato', 'mango') THEN unit || 'es'
        WHEN unit ~* '(s|sh|ch|x|z)$' THEN unit || 'es'
        WHEN unit ~* '[^aeiou]y$' THEN left(unit, -1) || 'ies'
        ELSE unit || 's'
    END AS w) AS plural
$$;
