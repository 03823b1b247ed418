-- A tick's optional exact fields, one column each (NULL when the source had none): the trade's size and
-- aggressor side and the exchange's trade id; the best bid and ask with their sizes. Nullable columns with
-- no default are added without rewriting the table. The checks hold what the wire validates (tickhub.wire).
ALTER TABLE ticks
    ADD COLUMN qty      numeric CHECK (qty > 0),
    ADD COLUMN side     text CHECK (side IN ('buy', 'sell')),
    ADD COLUMN trade_id text,
    ADD COLUMN bid      numeric CHECK (bid > 0),
    ADD COLUMN bid_qty  numeric CHECK (bid_qty >= 0),
    ADD COLUMN ask      numeric CHECK (ask > 0),
    ADD COLUMN ask_qty  numeric CHECK (ask_qty >= 0);
ALTER TABLE latest_ticks
    ADD COLUMN qty      numeric,
    ADD COLUMN side     text,
    ADD COLUMN trade_id text,
    ADD COLUMN bid      numeric,
    ADD COLUMN bid_qty  numeric,
    ADD COLUMN ask      numeric,
    ADD COLUMN ask_qty  numeric;

-- Exchange trade ids were kept in extra until now: each moves to its column, and an extra left empty
-- becomes NULL again. The tick's JSON is the same bytes before and after (trade_id followed seq then too).
UPDATE ticks
SET trade_id = extra ->> 'trade_id', extra = nullif(extra - 'trade_id', '{}'::jsonb)
WHERE extra ? 'trade_id';
UPDATE latest_ticks
SET trade_id = extra ->> 'trade_id', extra = nullif(extra - 'trade_id', '{}'::jsonb)
WHERE extra ? 'trade_id';
