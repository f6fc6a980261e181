// koala-rpc greeter server for the RPC benchmark (address from BENCH_ADDRESS).
import { startGreeter } from "../../examples/hello/server.js";

const { address } = await startGreeter(process.env.BENCH_ADDRESS ?? "tcp://127.0.0.1:0");
process.send!({ address });

// Exit with the parent (also lets --cpu-prof write its profile).
process.on("disconnect", () => process.exit(0));
