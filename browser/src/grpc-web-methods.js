// The official grpc-web client without protoc: protoc-gen-grpc-web would
// generate one MethodDescriptor per method, with the request's
// serializeBinary and the response's deserializeBinary from
// google-protobuf's generated classes. Here the same MethodDescriptor is
// made from the service descriptor in demo.js, with protobuf-es's
// toBinary/fromBinary as the two functions: grpc-web only ever calls those
// two, so its messages are plain protobuf-es messages.

import { toBinary, fromBinary } from "@bufbuild/protobuf";
import * as grpcWeb from "grpc-web";
import { OrderService } from "./demo.js";

/**
 * A grpc-web `MethodDescriptor` for one method of `demo.v1.OrderService`,
 * with the path to call it by and its request schema: `{ path, descriptor, input }`.
 */
export function grpcWebMethod(methodName) {
  const method = OrderService.methods.find((m) => m.name === methodName);
  if (!method) throw new Error(`demo.v1.OrderService has no method ${methodName}`);
  const type =
    method.methodKind === "server_streaming" ? grpcWeb.MethodType.SERVER_STREAMING : grpcWeb.MethodType.UNARY;
  const path = `/${OrderService.typeName}/${method.name}`;
  // grpc-web only calls the two functions; the two "types" are never constructed.
  const descriptor = new grpcWeb.MethodDescriptor(
    path,
    type,
    Object,
    Object,
    (request) => toBinary(method.input, request),
    (bytes) => fromBinary(method.output, bytes),
  );
  return { path, descriptor, input: method.input };
}
