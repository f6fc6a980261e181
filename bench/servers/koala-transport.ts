// koala transport echo server: every message is sent back as it is.
import { listen } from "../../src/index.js";

const l = await listen(process.env.BENCH_ADDRESS ?? "tcp://127.0.0.1:0", { maxMessageBytes: 64 * 1024 * 1024 });
l.onConnection((c) => c.onMessage((m) => c.send([m])));
process.send!({ address: l.address });

// Exit with the parent (also lets --cpu-prof write its profile).
process.on("disconnect", () => process.exit(0));
