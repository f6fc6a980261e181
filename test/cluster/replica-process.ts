// Child process: one replica for the fault tests. Serves Echo at argv[2] (unary answers `text` =
// argv[3], the replica's name, after `delayMs`) and reports its bound address over IPC.
import { setTimeout as sleep } from "node:timers/promises";
import { createServer } from "../../src/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";

const name = process.argv[3] ?? "replica";
const server = createServer({ logHandlerErrors: false });
server.add(EchoService, {
  async unary(req) {
    if (req.delayMs > 0) await sleep(req.delayMs);
    return EchoService.methods.unary.output.create({ text: name });
  },
});
const address = await server.listen(process.argv[2]!);
process.send!({ address });
