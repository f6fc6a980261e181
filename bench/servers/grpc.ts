// @grpc/grpc-js greeter server for the RPC benchmark: the same hello.proto, echoing payloads.
import * as grpc from "@grpc/grpc-js";
import * as loader from "@grpc/proto-loader";

const def = loader.loadSync(new URL("../../examples/hello/hello.proto", import.meta.url).pathname);
const hello = (grpc.loadPackageDefinition(def) as any).hello;
const server = new grpc.Server({ "grpc.max_receive_message_length": 64 << 20, "grpc.max_send_message_length": 64 << 20 });
server.addService(hello.Greeter.service, {
  SayHello: (call: any, cb: any) => cb(null, { message: `Hello, ${call.request.name}!`, payload: call.request.payload }),
  SayHelloInLanguages: (call: any) => call.end(),
  GreetMany: (_call: any, cb: any) => cb(null, {}),
  Chat: (call: any) => {
    call.on("data", (r: any) => call.write({ message: r.name, payload: r.payload }));
    call.on("end", () => call.end());
  },
});
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) throw err;
  process.send!({ address: `127.0.0.1:${port}` });
});

// Exit with the parent (also lets --cpu-prof write its profile).
process.on("disconnect", () => process.exit(0));
