-- A market order fills at the best ask (a buy) or the best bid (a sell) when a fresh quote is known, else
-- at the last trade price: which price it used, and the last trade price at the time (a fill at the quote
-- minus it, times the size, is the spread the order paid). Orders filled before keep 'last'.
ALTER TABLE orders ADD COLUMN price_source text NOT NULL DEFAULT 'last' CHECK (price_source IN ('ask', 'bid', 'last'));
ALTER TABLE orders ADD COLUMN last_price numeric;
