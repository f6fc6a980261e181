/**
 * The greeter in one command (`npm run example:hello`): serves, calls once with each call
 * kind, shuts down. The transport comes from the address or KOALA_TRANSPORT.
 */
import { greet } from "./client.js";
import { startGreeter } from "./server.js";

const { server, address } = await startGreeter(process.env.ADDRESS ?? "localhost:0");
console.log(`greeter listening on ${address}`);
await greet(address);
await server.shutdown();
