-- Accounts and every credential that proves who a caller is. The pool's
-- search_path is the `users` schema, so these names live there.

CREATE TABLE users (
    id               uuid PRIMARY KEY,
    email            text NOT NULL,
    -- Lower-cased email: uniqueness and lookups ignore case.
    email_normalized text NOT NULL UNIQUE,
    display_name     text NOT NULL,
    password_hash    text NOT NULL,
    roles            text[] NOT NULL DEFAULT '{customer}',
    email_verified   boolean NOT NULL DEFAULT false,
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Keyset pagination walks (created_at, id).
CREATE INDEX users_created_at_id ON users (created_at, id);

-- Refresh tokens rotate within a family (one login session). A used token
-- presented again revokes its whole family.
CREATE TABLE refresh_tokens (
    token_hash  bytea PRIMARY KEY,
    family_id   uuid NOT NULL,
    user_id     uuid NOT NULL REFERENCES users (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

-- Single-use tokens for email verification and password reset.
CREATE TABLE one_time_tokens (
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id),
    purpose     text NOT NULL CHECK (purpose IN ('email_verification', 'password_reset')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);

CREATE INDEX one_time_tokens_user ON one_time_tokens (user_id, purpose);

-- API keys: only a SHA-256 of the (high-entropy) secret is stored.
CREATE TABLE api_keys (
    id                    uuid PRIMARY KEY,
    user_id               uuid NOT NULL REFERENCES users (id),
    name                  text NOT NULL,
    prefix                text NOT NULL,
    key_hash              bytea NOT NULL UNIQUE,
    permissions           text[] NOT NULL,
    rate_limit_per_minute integer NOT NULL,
    expires_at            timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    last_used_at          timestamptz,
    revoked_at            timestamptz
);

CREATE INDEX api_keys_user ON api_keys (user_id, created_at DESC);

-- Events written in the same transaction as the change they describe; a
-- relay publishes them and sets published_at.
CREATE TABLE outbox (
    id           uuid PRIMARY KEY,
    event_type   text NOT NULL,
    aggregate_id text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
