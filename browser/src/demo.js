// The demo service's schema for both browser clients, read at start-up from
// the repository's own compiled descriptor set (descriptors/demo.binpb, kept
// in step with proto/demo/v1/orders.proto by tests/generated_files.rs) — the
// same file the gateway loads. esbuild embeds it as bytes, so no code is
// generated from the .proto and nothing here can drift from it.
//
// connect-web takes the service descriptor as it is; grpc-web's method
// descriptors are made from it in grpc-web-methods.js.

import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import demoDescriptorSet from "../../descriptors/demo.binpb";

const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, demoDescriptorSet));

function lookup(kind, name) {
  const found = kind === "service" ? registry.getService(name) : registry.getMessage(name);
  if (!found) throw new Error(`descriptors/demo.binpb has no ${kind} ${name}`);
  return found;
}

/** `demo.v1.OrderService` for connect-web's `createClient`. */
export const OrderService = lookup("service", "demo.v1.OrderService");
/** The `demo.v1.OrderState` enum (number → name). */
export const OrderState = registry.getEnum("demo.v1.OrderState");

/** The name of an `OrderState` value, e.g. 3 → "SHIPPED". */
export function stateName(value) {
  return OrderState.values.find((v) => v.number === value)?.name ?? String(value);
}
