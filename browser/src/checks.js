// The page tests/browser.rs loads in headless Chromium. It calls the gateway
// (on another origin) with the two stock gRPC-Web clients — connect-web and
// the official grpc-web — and with fetch for REST, checks each answer, and
// publishes what it saw in `window.results`, in the table on the page, and
// (with `?report=PATH`) as JSON POSTed to its own origin, where the test
// reads it.
//
// Query parameters:
//   gateway  the gateway's base URL, e.g. http://localhost:8080 (required)
//   expect   "allowed" (default): this origin is in cors.allow_origins and
//            every call must work; "blocked": it is not, and every call
//            must fail in JavaScript
//   report   a path on this page's origin to POST the results to
//
// A check throws when what it saw is wrong; either way it returns the facts
// it saw, so the Rust test can assert on them too.

import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import * as grpcWeb from "grpc-web";
import { create } from "@bufbuild/protobuf";
import { OrderService, stateName } from "./demo.js";
import { grpcWebMethod } from "./grpc-web-methods.js";

const params = new URLSearchParams(location.search);
const gateway = (params.get("gateway") ?? "").replace(/\/+$/, "");
const expectation = params.get("expect") ?? "allowed";
const reportTo = params.get("report");

/** Everything this page found, keyed by check name. */
const results = { origin: location.origin, gateway, expect: expectation, checks: {}, errors: [], done: false };
window.results = results;

window.addEventListener("error", (e) => results.errors.push(`error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => results.errors.push(`unhandled rejection: ${e.reason}`));

const CHECK_TIMEOUT_MS = 10_000;
const WATCH_INTERVAL_MS = 100;
const FAIL_HEADER = "x-demo-fail";
const SERVED_BY_HEADER = "x-served-by";

function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Runs one check; records `{ok: true, ...facts}` or `{ok: false, error, ...facts}`. */
async function check(name, body) {
  const facts = {};
  try {
    await withTimeout(body(facts), CHECK_TIMEOUT_MS, name);
    results.checks[name] = { ok: true, ...facts };
  } catch (e) {
    results.checks[name] = { ok: false, error: String(e && e.stack ? e.stack : e), ...facts };
  }
  render(name);
}

function render(name) {
  const row = document.createElement("tr");
  const { ok, ...facts } = results.checks[name];
  for (const text of [ok ? "PASS" : "FAIL", name, JSON.stringify(facts)]) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.append(cell);
  }
  row.className = ok ? "pass" : "fail";
  document.getElementById("checks").append(row);
}

// ---- the clients -----------------------------------------------------------

const connect = createClient(OrderService, createGrpcWebTransport({ baseUrl: gateway, useBinaryFormat: true }));

// The official client in text mode (application/grpc-web-text): the mode its
// docs give for server streaming. connect-web above speaks binary.
const grpcWebClient = new grpcWeb.GrpcWebClientBase({ format: "text" });
const GetOrder = grpcWebMethod("GetOrder");
const WatchOrder = grpcWebMethod("WatchOrder");

/** A grpc-web unary call: resolves `{response, headers}`, rejects with its RpcError. */
function grpcWebUnary(method, request, metadata = {}) {
  return new Promise((resolve, reject) => {
    let headers = {};
    const call = grpcWebClient.rpcCall(
      gateway + method.path,
      create(method.input, request),
      metadata,
      method.descriptor,
      (err, response) => (err ? reject(err) : resolve({ response, headers })),
    );
    call.on("metadata", (md) => {
      headers = md;
    });
  });
}

/** A grpc-web server stream: resolves `{messages, headers, status}` at its end. */
function grpcWebStream(method, request, onMessage) {
  return new Promise((resolve, reject) => {
    let headers = {};
    let status = null;
    const stream = grpcWebClient.serverStreaming(gateway + method.path, create(method.input, request), {}, method.descriptor);
    stream.on("metadata", (md) => {
      headers = md;
    });
    stream.on("data", onMessage);
    stream.on("status", (s) => {
      status = s;
    });
    stream.on("error", reject);
    stream.on("end", () => resolve({ headers, status }));
  });
}

function connectErrorFacts(e, facts) {
  assert(e instanceof ConnectError, `a ConnectError, got ${e}`);
  facts.code = e.code;
  facts.codeName = Code[e.code];
  facts.message = e.rawMessage;
}

function grpcWebErrorFacts(e, facts) {
  assert(e instanceof grpcWeb.RpcError, `a grpc-web RpcError, got ${e}`);
  facts.code = e.code;
  facts.codeName = Object.keys(grpcWeb.StatusCode).find((k) => grpcWeb.StatusCode[k] === e.code);
  facts.message = e.message;
}

/** Checks the events of WatchOrder: in order, at least 3, each from the replica named in the headers. */
function checkEvents(facts) {
  const states = facts.events.map((e) => e.state);
  assert(states.length >= 3, `at least 3 events, got ${states.length}`);
  assert(
    JSON.stringify(states) === JSON.stringify(["PLACED", "PACKED", "SHIPPED", "DELIVERED"]),
    `events in order, got ${states}`,
  );
  assert(facts.events.every((e) => e.servedBy === facts.headerServedBy), "every event from the replica in x-served-by");
  // Arrival times prove each message came when it was sent, not all at the end.
  facts.spreadMs = Math.round(facts.events.at(-1).atMs - facts.events[0].atMs);
}

// ---- the checks ------------------------------------------------------------

async function allowedChecks() {
  // (1) unary, (4) response metadata
  await check("connect.unary", async (facts) => {
    const order = await connect.getOrder(
      { name: "orders/1" },
      { onHeader: (h) => (facts.headerServedBy = h.get(SERVED_BY_HEADER)) },
    );
    Object.assign(facts, { name: order.name, item: order.item, state: stateName(order.state), servedBy: order.servedBy });
    assert(order.name === "orders/1" && order.item === "espresso beans", "the order asked for");
    assert(order.servedBy && facts.headerServedBy === order.servedBy, "x-served-by header readable, naming the replica");
  });
  await check("grpcweb.unary", async (facts) => {
    const { response, headers } = await grpcWebUnary(GetOrder, { name: "orders/2" });
    facts.headerServedBy = headers[SERVED_BY_HEADER] ?? null;
    Object.assign(facts, {
      name: response.name,
      item: response.item,
      state: stateName(response.state),
      servedBy: response.servedBy,
    });
    assert(response.name === "orders/2" && response.item === "grinder", "the order asked for");
    assert(response.servedBy && facts.headerServedBy === response.servedBy, "x-served-by header readable, naming the replica");
  });

  // (2) server streaming
  await check("connect.stream", async (facts) => {
    facts.events = [];
    const started = performance.now();
    const stream = connect.watchOrder(
      { name: "orders/3", intervalMs: WATCH_INTERVAL_MS },
      { onHeader: (h) => (facts.headerServedBy = h.get(SERVED_BY_HEADER)) },
    );
    for await (const event of stream) {
      facts.events.push({ state: stateName(event.state), servedBy: event.servedBy, atMs: performance.now() - started });
    }
    checkEvents(facts);
  });
  await check("grpcweb.stream", async (facts) => {
    facts.events = [];
    const started = performance.now();
    const { headers, status } = await grpcWebStream(WatchOrder, { name: "orders/3", intervalMs: WATCH_INTERVAL_MS }, (event) =>
      facts.events.push({ state: stateName(event.state), servedBy: event.servedBy, atMs: performance.now() - started }),
    );
    facts.headerServedBy = headers[SERVED_BY_HEADER] ?? null;
    facts.statusCode = status ? status.code : null;
    assert(facts.statusCode === 0, `status OK at the end, got ${facts.statusCode}`);
    checkEvents(facts);
  });

  // (3) errors: code and message readable
  await check("connect.error.requested", async (facts) => {
    try {
      await connect.getOrder({ name: "orders/1" }, { headers: { [FAIL_HEADER]: "5" } });
      throw new Error("the call succeeded");
    } catch (e) {
      connectErrorFacts(e, facts);
    }
    assert(facts.code === Code.NotFound, `NOT_FOUND, got ${facts.codeName}`);
  });
  await check("connect.error.missing", async (facts) => {
    try {
      await connect.getOrder({ name: "orders/404" });
      throw new Error("the call succeeded");
    } catch (e) {
      connectErrorFacts(e, facts);
    }
    assert(facts.code === Code.NotFound, `NOT_FOUND, got ${facts.codeName}`);
  });
  await check("grpcweb.error.requested", async (facts) => {
    try {
      await grpcWebUnary(GetOrder, { name: "orders/1" }, { [FAIL_HEADER]: "5" });
      throw new Error("the call succeeded");
    } catch (e) {
      grpcWebErrorFacts(e, facts);
    }
    assert(facts.code === grpcWeb.StatusCode.NOT_FOUND, `NOT_FOUND, got ${facts.codeName}`);
  });
  await check("grpcweb.error.missing", async (facts) => {
    try {
      await grpcWebUnary(GetOrder, { name: "orders/404" });
      throw new Error("the call succeeded");
    } catch (e) {
      grpcWebErrorFacts(e, facts);
    }
    assert(facts.code === grpcWeb.StatusCode.NOT_FOUND, `NOT_FOUND, got ${facts.codeName}`);
  });

  // (5) REST with fetch
  await check("rest.get", async (facts) => {
    const response = await fetch(`${gateway}/v1/orders/1`, { headers: { accept: "application/json" } });
    facts.status = response.status;
    facts.contentType = response.headers.get("content-type");
    facts.headerServedBy = response.headers.get(SERVED_BY_HEADER);
    facts.body = await response.json();
    assert(response.ok, `HTTP 200, got ${response.status}`);
    assert(facts.body.name === "orders/1" && facts.body.state === "SHIPPED", "the order as JSON");
    assert(facts.headerServedBy === facts.body.servedBy, "x-served-by header readable");
  });
  await check("rest.error", async (facts) => {
    const response = await fetch(`${gateway}/v1/orders/404`);
    facts.status = response.status;
    facts.body = await response.json();
    assert(response.status === 404 && facts.body.code === 5, "HTTP 404 with a google.rpc.Status of NOT_FOUND");
  });
}

// (6) an origin not in cors.allow_origins: the browser refuses every answer.
async function blockedChecks() {
  await check("blocked.rest", async (facts) => {
    try {
      const response = await fetch(`${gateway}/v1/orders/1`);
      facts.status = response.status;
      throw new Error("fetch was allowed to read the answer");
    } catch (e) {
      facts.error = `${e.name}: ${e.message}`;
      assert(e instanceof TypeError, `a TypeError from fetch, got ${e}`);
    }
  });
  await check("blocked.connect", async (facts) => {
    try {
      await connect.getOrder({ name: "orders/1" });
      throw new Error("the call succeeded");
    } catch (e) {
      connectErrorFacts(e, facts);
    }
  });
  await check("blocked.grpcweb", async (facts) => {
    try {
      await grpcWebUnary(GetOrder, { name: "orders/1" });
      throw new Error("the call succeeded");
    } catch (e) {
      grpcWebErrorFacts(e, facts);
    }
    assert(facts.code !== grpcWeb.StatusCode.OK, "a failed call");
  });
}

async function report() {
  results.done = true;
  document.body.dataset.done = "true";
  document.getElementById("summary").textContent = Object.values(results.checks).every((c) => c.ok)
    ? "all checks passed"
    : "some checks FAILED";
  if (reportTo) {
    await fetch(reportTo, { method: "POST", body: JSON.stringify(results) });
  }
}

async function main() {
  document.getElementById("title").textContent = `${location.origin} → ${gateway} (${expectation})`;
  if (!gateway) throw new Error("no ?gateway= given");
  if (expectation === "blocked") {
    await blockedChecks();
  } else {
    await allowedChecks();
  }
}

main()
  .catch((e) => results.errors.push(`main: ${e && e.stack ? e.stack : e}`))
  .finally(report);
