-- Products, categories, stock and reservations. The pool's search_path is
-- the `catalog` schema, so these names (and the extensions) live there.

CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS fuzzystrmatch;

CREATE TABLE categories (
    id         uuid PRIMARY KEY,
    slug       text NOT NULL UNIQUE,
    name       text NOT NULL,
    parent_id  uuid REFERENCES categories (id),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX categories_parent ON categories (parent_id);

CREATE TABLE products (
    id           uuid PRIMARY KEY,
    sku          text NOT NULL,
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    category_id  uuid NOT NULL REFERENCES categories (id),
    price_minor  bigint NOT NULL CHECK (price_minor >= 0),
    currency     char(3) NOT NULL,
    -- Bumped on every change; the etag clients send back.
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    -- Name outweighs description in ranking.
    search       tsvector GENERATED ALWAYS AS (
                     setweight(to_tsvector('simple', name), 'A') ||
                     setweight(to_tsvector('simple', description), 'B')
                 ) STORED
);

-- A SKU is unique among live products; a deleted product frees its SKU.
CREATE UNIQUE INDEX products_sku_live ON products (sku) WHERE deleted_at IS NULL;
CREATE INDEX products_search ON products USING gin (search) WHERE deleted_at IS NULL;
CREATE INDEX products_name_trgm ON products USING gin (lower(name) gin_trgm_ops) WHERE deleted_at IS NULL;
CREATE INDEX products_newest ON products (created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX products_price ON products (price_minor, id) WHERE deleted_at IS NULL;
CREATE INDEX products_category ON products (category_id) WHERE deleted_at IS NULL;

-- The words of product names, for typo correction: a misspelt query word
-- is replaced by the closest known word.
CREATE TABLE search_words (
    word text PRIMARY KEY,
    ndoc integer NOT NULL DEFAULT 1
);

CREATE INDEX search_words_trgm ON search_words USING gin (word gin_trgm_ops);

CREATE TABLE stock (
    product_id uuid PRIMARY KEY REFERENCES products (id),
    on_hand    integer NOT NULL CHECK (on_hand >= 0),
    reserved   integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    CHECK (reserved <= on_hand)
);

-- Every change of stock, with its reason.
CREATE TABLE stock_movements (
    id             bigserial PRIMARY KEY,
    product_id     uuid NOT NULL REFERENCES products (id),
    on_hand_delta  integer NOT NULL,
    reserved_delta integer NOT NULL,
    reason         text NOT NULL,
    reservation_id uuid,
    actor          text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX stock_movements_product ON stock_movements (product_id, created_at);

CREATE TABLE reservations (
    id              uuid PRIMARY KEY,
    owner_id        text NOT NULL,
    status          text NOT NULL CHECK (status IN ('held', 'committed', 'released', 'expired')),
    idempotency_key text,
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX reservations_idempotency ON reservations (owner_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX reservations_expiring ON reservations (expires_at) WHERE status = 'held';

CREATE TABLE reservation_items (
    reservation_id uuid NOT NULL REFERENCES reservations (id),
    product_id     uuid NOT NULL REFERENCES products (id),
    quantity       integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, product_id)
);

CREATE INDEX reservation_items_product ON reservation_items (product_id);

-- Product views by signed-in users, for "also viewed" recommendations.
CREATE TABLE product_views (
    viewer_id  text NOT NULL,
    product_id uuid NOT NULL REFERENCES products (id),
    viewed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX product_views_product ON product_views (product_id, viewed_at);
CREATE INDEX product_views_viewer ON product_views (viewer_id, viewed_at);

CREATE TABLE outbox (
    id           uuid PRIMARY KEY,
    event_type   text NOT NULL,
    aggregate_id text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
