/**
 * The greeter client: one call of each kind. Run the server first, then
 * `npm run example:hello:client` (ADDRESS as for the server) — or both at once with
 * `npm run example:hello`.
 */
import { closeClient, createClient } from "../../src/index.js";
import { GreeterService } from "./gen/hello.js";

/** Calls the greeter at `address` once with each call kind and prints the replies. */
export async function greet(address: string): Promise<void> {
  const client = createClient(GreeterService, address);
  try {
    const reply = await client.sayHello({ name: "koala" }, { timeoutMs: 2000 });
    console.log(`unary:            ${reply.message}`);

    const languages: string[] = [];
    for await (const r of client.sayHelloInLanguages({ name: "koala" })) languages.push(r.message);
    console.log(`server streaming: ${languages.join(" / ")}`);

    const many = await client.greetMany([{ name: "Ana" }, { name: "Ben" }, { name: "Chen" }]);
    console.log(`client streaming: ${many.message}`);

    async function* names() {
      for (const name of ["Dee", "Eli"]) yield { name };
    }
    for await (const r of client.chat(names())) console.log(`bidi streaming:   ${r.message}`);
  } finally {
    closeClient(client);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await greet(process.env.ADDRESS ?? "localhost:50051");
