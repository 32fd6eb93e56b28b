// The main user journeys of the commerce API, through the edge, at fixed
// arrival rates: browse, search, sign in, reserve stock, chat.
//
//   ./scripts/loadtest.sh                # builds, starts a mesh, runs this, stops it
//   k6 run -e BASE_URL=http://127.0.0.1:3000 -e ADMIN_EMAIL=… -e ADMIN_PASSWORD=… loadtest/journeys.js
//
// Rates and length: RATE (multiplies every journey's rate, default 1),
// DURATION (default 60s). setup() signs the administrator in, makes a
// category, PRODUCTS products with plenty of stock, and CUSTOMERS customers
// that share a chat room. Every request is tagged with its journey, so the
// summary gives latency per journey.
import http from "k6/http";
import { check, fail } from "k6";
import exec from "k6/execution";

const BASE = __ENV.BASE_URL || "http://127.0.0.1:3000";
const API = `${BASE}/api/v1`;
const RATE = Number(__ENV.RATE || 1);
const DURATION = __ENV.DURATION || "60s";
const PRODUCTS = Number(__ENV.PRODUCTS || 200);
const CUSTOMERS = Number(__ENV.CUSTOMERS || 20);
const PASSWORD = "load test password 1";
const WORDS = ["lamp", "chair", "table", "desk", "shelf", "rug", "mirror", "clock", "vase", "sofa",
  "stool", "bench", "cabinet", "curtain", "pillow", "blanket", "candle", "basket", "frame", "plant"];
const COLOURS = ["oak", "walnut", "black", "white", "brass", "linen", "stone", "blue", "green", "red"];

function journey(name, rate, exec) {
  return {
    executor: "constant-arrival-rate",
    exec,
    rate: Math.max(1, Math.round(rate * RATE)),
    timeUnit: "1s",
    duration: DURATION,
    preAllocatedVUs: Math.max(4, Math.round(rate * RATE)),
    maxVUs: Math.max(20, Math.round(rate * RATE * 10)),
    tags: { journey: name },
  };
}

export const options = {
  scenarios: {
    browse: journey("browse", 40, "browse"),
    search: journey("search", 30, "search"),
    sign_in: journey("sign_in", 2, "signIn"),
    reserve: journey("reserve", 10, "reserve"),
    chat: journey("chat", 10, "chat"),
  },
  thresholds: {
    // The budget of the SLO (docs/operations.md): 99.9% of calls answered
    // without a server error. Expected 4xx (out of stock) are not failures.
    "http_req_failed": ["rate<0.001"],
    "http_req_duration{journey:browse}": ["p(95)<300"],
    "http_req_duration{journey:search}": ["p(95)<300"],
    "http_req_duration{journey:reserve}": ["p(95)<300"],
    "http_req_duration{journey:chat}": ["p(95)<300"],
    "http_req_duration{journey:sign_in}": ["p(95)<1000"],
  },
  summaryTrendStats: ["avg", "min", "med", "p(90)", "p(95)", "p(99)", "max"],
  setupTimeout: "300s",
};

function json(body, token, extra) {
  const headers = Object.assign({ "content-type": "application/json" }, extra || {});
  if (token) headers.authorization = `Bearer ${token}`;
  return { headers, body: body === undefined ? undefined : JSON.stringify(body) };
}

function ok(res, what) {
  if (!check(res, { [what]: (r) => r.status >= 200 && r.status < 300 })) {
    fail(`${what}: ${res.status} ${res.body}`);
  }
  return res.json();
}

function login(email) {
  const res = http.post(`${API}/auth/login`, JSON.stringify({ email, password: PASSWORD }),
    json(undefined, undefined));
  return res;
}

export function setup() {
  const admin = ok(http.post(`${API}/auth/login`, JSON.stringify({
    email: __ENV.ADMIN_EMAIL, password: __ENV.ADMIN_PASSWORD,
  }), json()), "admin login").tokens.accessToken;
  const run = Date.now().toString(36);
  const category = ok(http.post(`${API}/categories`,
    JSON.stringify({ slug: `load-${run}`, name: `Load ${run}` }), json(undefined, admin)),
  "create category");
  const products = [];
  for (let i = 0; i < PRODUCTS; i++) {
    const word = WORDS[i % WORDS.length];
    const colour = COLOURS[Math.floor(i / WORDS.length) % COLOURS.length];
    const product = ok(http.post(`${API}/products?initialStock=1000000`, JSON.stringify({
      sku: `LOAD-${run}-${i}`.toUpperCase(),
      name: `${colour} ${word} ${i}`,
      description: `A ${colour} ${word} made for the load test.`,
      categoryId: category.id,
      price: { currency: "EUR", amountMinor: String(1000 + i * 37) },
    }), json(undefined, admin)), "create product");
    products.push(product.id);
  }
  const customers = [];
  for (let i = 0; i < CUSTOMERS; i++) {
    const email = `load-${run}-${i}@example.com`;
    ok(http.post(`${API}/users`, JSON.stringify({
      email, password: PASSWORD, displayName: `Load ${i}`,
    }), json()), "register");
    const session = ok(login(email), "customer login");
    customers.push({ email, id: session.user.id, token: session.tokens.accessToken });
  }
  const room = ok(http.post(`${API}/chat/rooms`, JSON.stringify({
    name: `load ${run}`, memberIds: customers.slice(1).map((c) => c.id),
  }), json(undefined, customers[0].token)), "create room");
  return { products, customers, room: room.id };
}

function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

export function browse(data) {
  const page = http.get(`${API}/products?pageSize=20`);
  check(page, { "list 200": (r) => r.status === 200 });
  const id = pick(data.products);
  check(http.get(`${API}/products/${id}`), { "product 200": (r) => r.status === 200 });
  check(http.get(`${API}/products/${id}/recommendations`), { "recs 200": (r) => r.status === 200 });
}

export function search() {
  const word = pick(WORDS);
  check(http.get(`${API}/products:suggest?q=${word.slice(0, 3)}`), { "suggest 200": (r) => r.status === 200 });
  check(http.get(`${API}/products?q=${pick(COLOURS)}%20${word}`), { "search 200": (r) => r.status === 200 });
}

export function signIn(data) {
  const customer = pick(data.customers);
  const res = login(customer.email);
  if (!check(res, { "login 200": (r) => r.status === 200 })) return;
  const token = res.json().tokens.accessToken;
  check(http.get(`${API}/users/me`, json(undefined, token)), { "me 200": (r) => r.status === 200 });
}

export function reserve(data) {
  const customer = pick(data.customers);
  const key = `${exec.scenario.iterationInTest}-${exec.vu.idInTest}-${Date.now()}`;
  const res = http.post(`${API}/reservations`, JSON.stringify({
    items: [{ productId: pick(data.products), quantity: 1 }], ttlSeconds: 60,
  }), json(undefined, customer.token, { "idempotency-key": key }));
  if (!check(res, { "reserve 200": (r) => r.status === 200 })) return;
  const id = res.json().id;
  // Half the carts are bought, half abandoned.
  const verb = Math.random() < 0.5 ? "commit" : "release";
  check(http.post(`${API}/reservations/${id}:${verb}`, "{}", json(undefined, customer.token)),
    { [`${verb} 200`]: (r) => r.status === 200 });
}

export function chat(data) {
  const customer = pick(data.customers);
  const posted = http.post(`${API}/chat/rooms/${data.room}/messages`, JSON.stringify({
    clientId: `${exec.vu.idInTest}-${exec.scenario.iterationInTest}-${Date.now()}`,
    body: `hello from ${customer.email}`,
  }), json(undefined, customer.token));
  check(posted, { "post 200": (r) => r.status === 200 });
  check(http.get(`${API}/chat/rooms/${data.room}/messages?pageSize=20`, json(undefined, customer.token)),
    { "history 200": (r) => r.status === 200 });
}
