//! The gRPC surface: proto ⇄ domain. No SQL here.

use agora_kit::auth::Caller;
use agora_kit::proto::{or_default, page_size, timestamp};
use agora_proto::catalog::v1::{self as pb, catalog_service_server::CatalogService as CatalogApi};
use chrono::Utc;
use prost::Message as _;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    cache::ProductCache,
    domain::{Money, Sku, etag, parse_id, quantity, slug, text},
    error::CatalogError,
    inventory::{Reservation, Status as RStatus},
    search::{Cursor, Order, Query, cursor_after, words},
    store::{CategoryRow, NewProduct, ProductChanges, ProductRow, StockRow, Store},
};

/// Implements `agora.catalog.v1.CatalogService`.
#[derive(Clone)]
pub struct CatalogService {
    store: Store,
    cache: ProductCache,
    reservation_ttl: std::time::Duration,
}

type Answer<T> = Result<Response<T>, Status>;

impl CatalogService {
    pub fn new(store: Store, cache: ProductCache, reservation_ttl: std::time::Duration) -> Self {
        Self {
            store,
            cache,
            reservation_ttl,
        }
    }

    /// A product through the cache.
    async fn cached_product(&self, id: Uuid) -> Result<pb::Product, CatalogError> {
        if let Some(bytes) = self.cache.get(id).await
            && let Ok(p) = pb::Product::decode(bytes.as_slice())
        {
            return Ok(p);
        }
        let row = self
            .store
            .product(id)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("product {id}")))?;
        let p = product_pb(&row);
        self.cache.put(id, p.encode_to_vec()).await;
        Ok(p)
    }
}

fn product_pb(r: &ProductRow) -> pb::Product {
    pb::Product {
        id: r.id.to_string(),
        sku: r.sku.clone(),
        name: r.name.clone(),
        description: r.description.clone(),
        category_id: r.category_id.to_string(),
        price: Some(pb::Money {
            currency: r.currency.clone(),
            amount_minor: r.price_minor,
        }),
        etag: etag(r.version),
        create_time: Some(timestamp(r.created_at)),
        update_time: Some(timestamp(r.updated_at)),
        available: r.available,
    }
}

fn category_pb(r: &CategoryRow) -> pb::Category {
    pb::Category {
        id: r.id.to_string(),
        slug: r.slug.clone(),
        name: r.name.clone(),
        parent_id: r.parent_id.map(|p| p.to_string()).unwrap_or_default(),
    }
}

fn stock_pb(s: &StockRow) -> pb::Stock {
    pb::Stock {
        product_id: s.product_id.to_string(),
        on_hand: s.on_hand,
        reserved: s.reserved,
        available: s.on_hand - s.reserved,
    }
}

fn reservation_pb(r: &Reservation) -> pb::Reservation {
    let status = match r.status {
        RStatus::Held => pb::ReservationStatus::Held,
        RStatus::Committed => pb::ReservationStatus::Committed,
        RStatus::Released => pb::ReservationStatus::Released,
        RStatus::Expired => pb::ReservationStatus::Expired,
    };
    pb::Reservation {
        id: r.id.to_string(),
        items: r
            .items
            .iter()
            .map(|(p, q)| pb::ReservationItem {
                product_id: p.to_string(),
                quantity: *q,
            })
            .collect(),
        status: status as i32,
        expire_time: Some(timestamp(r.expires_at)),
        create_time: Some(timestamp(r.created_at)),
    }
}

/// `v12` → 12. An etag not made by this service matches no version, so
/// it is refused as stale (409), as any outdated etag is.
fn parse_etag(raw: &str) -> Option<i64> {
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.strip_prefix('v')
            .and_then(|v| v.parse().ok())
            .unwrap_or(NO_VERSION),
    )
}

/// A version no product has (versions start at 1).
const NO_VERSION: i64 = -1;

fn money(m: Option<&pb::Money>) -> Result<Money, CatalogError> {
    let m = m.ok_or_else(|| CatalogError::invalid("product.price", "is required"))?;
    Money::parse(&m.currency, m.amount_minor)
}

fn is_staff(c: &Caller) -> bool {
    c.has_role("staff") || c.has_role("admin")
}

fn actor(c: Option<&Caller>) -> String {
    c.map_or_else(|| "system".to_owned(), |c| c.user_id.clone())
}

#[tonic::async_trait]
impl CatalogApi for CatalogService {
    async fn list_products(
        &self,
        req: Request<pb::ListProductsRequest>,
    ) -> Answer<pb::ListProductsResponse> {
        let r = req.into_inner();
        let words = words(&r.q);
        let order = match pb::ProductOrder::try_from(r.order_by) {
            // Without search text every product is as relevant as the
            // next: the default order applies.
            Ok(pb::ProductOrder::Relevance) if words.is_empty() => Order::Newest,
            Ok(pb::ProductOrder::Relevance) => Order::Relevance,
            Ok(pb::ProductOrder::PriceAsc) => Order::PriceAsc,
            Ok(pb::ProductOrder::PriceDesc) => Order::PriceDesc,
            Ok(pb::ProductOrder::Newest) => Order::Newest,
            Ok(pb::ProductOrder::Unspecified) if !words.is_empty() => Order::Relevance,
            Ok(pb::ProductOrder::Unspecified) => Order::Newest,
            Err(_) => return Err(CatalogError::invalid("order_by", "is not a known order").into()),
        };
        let page_size = i64::from(page_size(r.page_size, 20));
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(Cursor::decode(&r.page_token, order)?)
        };
        let query = Query {
            words,
            category: (!r.category.is_empty()).then(|| r.category.clone()),
            min_price: (r.min_price > 0).then_some(r.min_price),
            max_price: (r.max_price > 0).then_some(r.max_price),
            in_stock: r.in_stock,
            order,
            page_size,
            after,
        };
        let mut rows = self.store.search(&query).await?;
        let more = rows.len() as i64 > page_size;
        rows.truncate(page_size as usize);
        let next_page_token = match rows.last() {
            Some((row, rank)) if more => cursor_after(order, row, *rank).encode(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListProductsResponse {
            products: rows.iter().map(|(r, _)| product_pb(r)).collect(),
            next_page_token,
        }))
    }

    async fn get_product(
        &self,
        req: Request<pb::GetProductRequest>,
    ) -> Answer<pb::GetProductResponse> {
        let viewer = req.extensions().get::<Caller>().map(|c| c.user_id.clone());
        let id = parse_id("id", &req.get_ref().id)?;
        let product = self.cached_product(id).await?;
        if let Some(viewer) = viewer
            && let Err(e) = self.store.record_view(&viewer, id).await
        {
            // A lost view must not fail the read.
            tracing::warn!(error = %e, "cannot record a product view");
        }
        Ok(Response::new(pb::GetProductResponse {
            product: Some(product),
        }))
    }

    async fn create_product(
        &self,
        req: Request<pb::CreateProductRequest>,
    ) -> Answer<pb::CreateProductResponse> {
        let who = actor(req.extensions().get::<Caller>());
        let r = req.into_inner();
        let p = r
            .product
            .ok_or_else(|| CatalogError::invalid("product", "is required"))?;
        let new = NewProduct {
            sku: Sku::parse(&p.sku)?,
            name: text("product.name", &p.name, 1, 200)?,
            description: text("product.description", &p.description, 0, 5000)?,
            category_id: parse_id("product.category_id", &p.category_id)?,
            price: money(p.price.as_ref())?,
            initial_stock: r.initial_stock,
        };
        let row = self.store.create_product(new, &who).await?;
        Ok(Response::new(pb::CreateProductResponse {
            product: Some(product_pb(&row)),
        }))
    }

    async fn update_product(
        &self,
        req: Request<pb::UpdateProductRequest>,
    ) -> Answer<pb::UpdateProductResponse> {
        let r = req.into_inner();
        let p = r
            .product
            .ok_or_else(|| CatalogError::invalid("product", "is required"))?;
        let id = parse_id("product.id", &p.id)?;
        let mut paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        // Without a mask, the fields present in the body are updated.
        if paths.is_empty() {
            let present = [
                ("sku", !p.sku.is_empty()),
                ("name", !p.name.is_empty()),
                ("description", !p.description.is_empty()),
                ("category_id", !p.category_id.is_empty()),
                ("price", p.price.is_some()),
            ];
            paths = present
                .into_iter()
                .filter(|(_, set)| *set)
                .map(|(name, _)| name.to_owned())
                .collect();
        }
        let mut changes = ProductChanges::default();
        for path in paths
            .iter()
            .filter(|p| !matches!(p.as_str(), "id" | "etag"))
        {
            match path.as_str() {
                "sku" => changes.sku = Some(Sku::parse(&p.sku)?),
                "name" => changes.name = Some(text("product.name", &p.name, 1, 200)?),
                "description" => {
                    changes.description =
                        Some(text("product.description", &p.description, 0, 5000)?)
                }
                "category_id" => {
                    changes.category_id = Some(parse_id("product.category_id", &p.category_id)?)
                }
                "price" | "price.amount_minor" | "price.currency" => {
                    changes.price = Some(money(p.price.as_ref())?)
                }
                other => {
                    return Err(CatalogError::invalid(
                        "update_mask",
                        format!("{other:?} is not an updatable field"),
                    )
                    .into());
                }
            }
        }
        let row = self
            .store
            .update_product(id, parse_etag(&p.etag), changes)
            .await?;
        self.cache.invalidate(id).await;
        Ok(Response::new(pb::UpdateProductResponse {
            product: Some(product_pb(&row)),
        }))
    }

    async fn delete_product(
        &self,
        req: Request<pb::DeleteProductRequest>,
    ) -> Answer<pb::DeleteProductResponse> {
        let r = req.into_inner();
        let id = parse_id("id", &r.id)?;
        self.store.delete_product(id, parse_etag(&r.etag)).await?;
        self.cache.invalidate(id).await;
        Ok(Response::new(pb::DeleteProductResponse {}))
    }

    async fn suggest_products(
        &self,
        req: Request<pb::SuggestProductsRequest>,
    ) -> Answer<pb::SuggestProductsResponse> {
        let r = req.into_inner();
        let limit = or_default(r.limit, 8);
        // Text without a word in it (punctuation only) matches nothing.
        let words = words(&r.q);
        let found = if words.is_empty() {
            Vec::new()
        } else {
            self.store.suggest(&words, limit).await?
        };
        Ok(Response::new(pb::SuggestProductsResponse {
            suggestions: found
                .into_iter()
                .map(|(id, name)| pb::Suggestion {
                    product_id: id.to_string(),
                    name,
                })
                .collect(),
        }))
    }

    async fn get_recommendations(
        &self,
        req: Request<pb::GetRecommendationsRequest>,
    ) -> Answer<pb::GetRecommendationsResponse> {
        let r = req.into_inner();
        let id = parse_id("id", &r.id)?;
        let limit = or_default(r.limit, 10);
        if self.store.product(id).await?.is_none() {
            return Err(CatalogError::NotFound(format!("product {id}")).into());
        }
        let mut ids = self.store.co_viewed(id, limit).await?;
        let source = if ids.is_empty() {
            ids = self.store.category_best_sellers(id, limit).await?;
            "category_best_sellers"
        } else {
            "co_views"
        };
        let rows = self.store.products_by_ids(&ids).await?;
        Ok(Response::new(pb::GetRecommendationsResponse {
            products: rows.iter().map(product_pb).collect(),
            source: source.into(),
        }))
    }

    async fn list_categories(
        &self,
        _req: Request<pb::ListCategoriesRequest>,
    ) -> Answer<pb::ListCategoriesResponse> {
        let rows = self.store.categories().await?;
        Ok(Response::new(pb::ListCategoriesResponse {
            categories: rows.iter().map(category_pb).collect(),
        }))
    }

    async fn create_category(
        &self,
        req: Request<pb::CreateCategoryRequest>,
    ) -> Answer<pb::CreateCategoryResponse> {
        let c = req
            .into_inner()
            .category
            .ok_or_else(|| CatalogError::invalid("category", "is required"))?;
        let slug = slug(&c.slug)?;
        let name = text("category.name", &c.name, 1, 100)?;
        let parent = if c.parent_id.is_empty() {
            None
        } else {
            Some(parse_id("category.parent_id", &c.parent_id)?)
        };
        let row = self.store.create_category(&slug, &name, parent).await?;
        Ok(Response::new(pb::CreateCategoryResponse {
            category: Some(category_pb(&row)),
        }))
    }

    async fn get_stock(&self, req: Request<pb::GetStockRequest>) -> Answer<pb::GetStockResponse> {
        let id = parse_id("id", &req.get_ref().id)?;
        let s = self
            .store
            .stock(id)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("product {id}")))?;
        Ok(Response::new(pb::GetStockResponse {
            stock: Some(stock_pb(&s)),
        }))
    }

    async fn adjust_stock(
        &self,
        req: Request<pb::AdjustStockRequest>,
    ) -> Answer<pb::AdjustStockResponse> {
        let who = actor(req.extensions().get::<Caller>());
        let r = req.into_inner();
        let id = parse_id("id", &r.id)?;
        let reason = text("reason", &r.reason, 1, 200)?;
        let s = self.store.adjust_stock(id, r.delta, &reason, &who).await?;
        self.cache.invalidate(id).await;
        Ok(Response::new(pb::AdjustStockResponse {
            stock: Some(stock_pb(&s)),
        }))
    }

    async fn create_reservation(
        &self,
        req: Request<pb::CreateReservationRequest>,
    ) -> Answer<pb::CreateReservationResponse> {
        let caller = Caller::from_request(&req)?.clone();
        let header_key = req
            .metadata()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let r = req.into_inner();
        let key = header_key.or((!r.request_id.is_empty()).then_some(r.request_id));
        if key.as_ref().is_some_and(|k| k.len() > 200) {
            return Err(
                CatalogError::invalid("request_id", "must be at most 200 characters").into(),
            );
        }
        let mut items = Vec::with_capacity(r.items.len());
        for item in &r.items {
            items.push((
                parse_id("items.product_id", &item.product_id)?,
                quantity("items.quantity", item.quantity)?,
            ));
        }
        items.sort_unstable();
        if items.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(CatalogError::invalid("items", "each product may appear once").into());
        }
        // The contract bounds it to 0..=3600; 0 asks for the default.
        let ttl = match u64::try_from(r.ttl_seconds) {
            Ok(n) if n > 0 => std::time::Duration::from_secs(n),
            _ => self.reservation_ttl,
        };
        let expires = Utc::now() + ttl;
        let reservation = self
            .store
            .reserve(&caller.user_id, key.as_deref(), &items, expires)
            .await?;
        if reservation.items != items {
            return Err(CatalogError::IdempotencyKeyReused.into());
        }
        for (product, _) in &items {
            self.cache.invalidate(*product).await;
        }
        Ok(Response::new(pb::CreateReservationResponse {
            reservation: Some(reservation_pb(&reservation)),
        }))
    }

    async fn commit_reservation(
        &self,
        req: Request<pb::CommitReservationRequest>,
    ) -> Answer<pb::CommitReservationResponse> {
        let caller = Caller::from_request(&req)?.clone();
        let id = parse_id("id", &req.get_ref().id)?;
        let r = self
            .store
            .commit(id, |owner| owner == caller.user_id || is_staff(&caller))
            .await?;
        for (product, _) in &r.items {
            self.cache.invalidate(*product).await;
        }
        Ok(Response::new(pb::CommitReservationResponse {
            reservation: Some(reservation_pb(&r)),
        }))
    }

    async fn release_reservation(
        &self,
        req: Request<pb::ReleaseReservationRequest>,
    ) -> Answer<pb::ReleaseReservationResponse> {
        let caller = Caller::from_request(&req)?.clone();
        let id = parse_id("id", &req.get_ref().id)?;
        let r = self
            .store
            .release(id, |owner| owner == caller.user_id || is_staff(&caller))
            .await?;
        for (product, _) in &r.items {
            self.cache.invalidate(*product).await;
        }
        Ok(Response::new(pb::ReleaseReservationResponse {
            reservation: Some(reservation_pb(&r)),
        }))
    }
}
