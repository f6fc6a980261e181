/**
 * The greeter server. Run: `npm run example:hello:server` (address from ADDRESS, default
 * localhost:50051; the transport from the address's scheme or from KOALA_TRANSPORT).
 */
import { createServer, type ServiceImplementation } from "../../src/index.js";
import { GreeterService } from "./gen/hello.js";

/** The greeter's handlers. */
export const greeter: ServiceImplementation<typeof GreeterService> = {
  sayHello(req) {
    return { message: `Hello, ${req.name}!`, payload: req.payload };
  },
  async *sayHelloInLanguages(req) {
    for (const greeting of ["Hello", "Bonjour", "Hola", "Hallo", "Ciao", "Olá", "Kia ora"]) {
      yield { message: `${greeting}, ${req.name}!` };
    }
  },
  async greetMany(requests) {
    const names: string[] = [];
    for await (const r of requests) names.push(r.name);
    return { message: `Hello, ${names.join(" and ")}!` };
  },
  async *chat(requests) {
    for await (const r of requests) yield { message: `Hello, ${r.name}!`, payload: r.payload };
  },
};

/** Starts a greeter server at `address`; returns the server and the bound address. */
export async function startGreeter(address: string) {
  const server = createServer();
  server.add(GreeterService, greeter);
  const bound = await server.listen(address);
  return { server, address: bound };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { server, address } = await startGreeter(process.env.ADDRESS ?? "localhost:50051");
  console.log(`greeter listening on ${address}`);
  if (process.send) process.send({ address });
  const stop = () => void server.shutdown({ timeoutMs: 2000 }).then(() => process.exit(0));
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  process.on("disconnect", stop);
}
