/**
 * The greeter client: one call of each kind. Run the server first, then
 * `npm run example:hello:client` (ADDRESS as for the server).
 */
import { closeClient, createClient } from "../../src/index.js";
import { GreeterService } from "./gen/hello.js";

const client = createClient(GreeterService, process.env.ADDRESS ?? "localhost:50051");

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

closeClient(client);
