/** The .proto every system in the RPC benchmark serves and calls: the hello example's Greeter. */
export const PROTO_PATH = new URL("../../examples/hello/hello.proto", import.meta.url).pathname;
