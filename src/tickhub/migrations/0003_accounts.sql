-- Trading accounts for the bots: cash, positions and market orders, all exact numerics.
CREATE TABLE accounts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    cash       numeric NOT NULL CHECK (cash >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- An API key is "th_<key_id>_<secret>"; only a SHA-256 of the secret is kept.
CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    secret_hash bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_account ON api_keys (account_id);

CREATE TABLE positions (
    account_id bigint NOT NULL REFERENCES accounts (id),
    symbol     text NOT NULL,
    qty        numeric NOT NULL CHECK (qty >= 0),
    cost_basis numeric NOT NULL CHECK (cost_basis >= 0),
    realized   numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, symbol)
);

CREATE TABLE orders (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    symbol          text NOT NULL,
    side            text NOT NULL CHECK (side IN ('buy', 'sell')),
    qty             numeric NOT NULL CHECK (qty > 0),
    price           numeric NOT NULL CHECK (price > 0),
    amount          numeric NOT NULL,
    realized        numeric NOT NULL,
    cash_after      numeric NOT NULL,
    tick_id         bigint NOT NULL,
    tick_ts         timestamptz NOT NULL,
    filled_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    idempotency_key text,
    CONSTRAINT orders_idempotency UNIQUE (account_id, idempotency_key)
);
CREATE INDEX orders_account ON orders (account_id, id);
