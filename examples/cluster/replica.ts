/**
 * One replica of the cluster example: the greeter, saying which replica answered. ADDRESS is
 * where it listens (default localhost:0), NAME what it calls itself; it reports its bound
 * address to a parent process over IPC.
 */
import { createServer } from "../../src/index.js";
import { greeter } from "../hello/server.js";
import { GreeterService } from "../hello/gen/hello.js";

const name = process.env.NAME ?? "replica";
const server = createServer();
server.add(GreeterService, { ...greeter, sayHello: (req) => ({ message: `Hello, ${req.name}! (${name})` }) });
const address = await server.listen(process.env.ADDRESS ?? "localhost:0");
process.send?.({ address });
process.on("SIGTERM", () => void server.shutdown({ timeoutMs: 1000 }).then(() => process.exit(0)));
