// The page in examples/browser/: calls the demo's OrderService through
// grpc-edge from another origin, with gRPC-Web (connect-web) and REST
// (fetch), and shows what came back. examples/browser/app.js is this file
// bundled by `npm run example` in browser/.
//
// Open it as index.html?gateway=http://localhost:8080 from an origin that
// the gateway's cors.allow_origins lists.

import { createClient, ConnectError } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { OrderService, stateName } from "./demo.js";

const params = new URLSearchParams(location.search);
const gateway = (params.get("gateway") ?? "http://localhost:8080").replace(/\/+$/, "");

// For tests/browser.rs: what each step did, also POSTed to ?report= when given.
const results = { steps: {}, done: false };
window.results = results;

const client = createClient(OrderService, createGrpcWebTransport({ baseUrl: gateway, useBinaryFormat: true }));

function show(section, text, kind = "") {
  const line = document.createElement("div");
  line.textContent = text;
  line.className = kind;
  document.getElementById(section).append(line);
}

async function step(section, body) {
  try {
    results.steps[section] = { ok: true, ...(await body()) };
  } catch (e) {
    results.steps[section] = { ok: false, error: String(e) };
    show(section, `failed: ${e}`, "error");
  }
}

async function main() {
  document.getElementById("gateway").textContent = gateway;
  document.getElementById("origin").textContent = location.origin;

  await step("rest", async () => {
    const response = await fetch(`${gateway}/v1/orders/1`);
    const order = await response.json();
    show("rest", `GET ${gateway}/v1/orders/1 → HTTP ${response.status}`);
    show("rest", JSON.stringify(order, null, 2), "json");
    return { status: response.status, item: order.item };
  });

  await step("unary", async () => {
    // Nine calls at once: the gateway picks a replica for each call.
    const orders = await Promise.all(Array.from({ length: 9 }, () => client.getOrder({ name: "orders/2" })));
    const servedBy = orders.map((order) => order.servedBy);
    for (const order of orders) {
      show("unary", `GetOrder(orders/2) → ${order.item}, ${stateName(order.state)}, served by ${order.servedBy}`);
    }
    const tally = {};
    for (const replica of servedBy) tally[replica] = (tally[replica] ?? 0) + 1;
    show("unary", `calls per replica: ${JSON.stringify(tally)}`);
    return { servedBy };
  });

  await step("stream", async () => {
    const states = [];
    for await (const event of client.watchOrder({ name: "orders/3", intervalMs: 400 })) {
      states.push(stateName(event.state));
      show("stream", `${new Date().toLocaleTimeString()}  ${event.name} is ${stateName(event.state)} (from ${event.servedBy})`);
    }
    return { states };
  });

  await step("error", async () => {
    try {
      await client.getOrder({ name: "orders/404" });
      throw new Error("GetOrder(orders/404) succeeded");
    } catch (e) {
      if (!(e instanceof ConnectError)) throw e;
      show("error", `GetOrder(orders/404) → gRPC status ${e.code}: ${e.rawMessage}`);
      return { code: e.code, message: e.rawMessage };
    }
  });
}

main().finally(async () => {
  results.done = true;
  document.body.dataset.done = "true";
  const report = params.get("report");
  if (report) await fetch(report, { method: "POST", body: JSON.stringify(results) });
});
