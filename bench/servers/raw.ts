// Raw baseline server: parses length-prefixed frames and echoes each one over TCP or a Unix
// socket (BENCH_ADDRESS). Frames inside one chunk are echoed as views; a frame spanning chunks
// is gathered into one buffer allocated once. Replies to one chunk leave in one write.
import net from "node:net";

const address = process.env.BENCH_ADDRESS ?? "tcp://127.0.0.1:0";
const server = net.createServer((s) => {
  s.setNoDelay(true);
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let need = -1;
  const take = (n: number): Buffer => {
    const first = pending[0]!;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) pending.shift();
      else pending[0] = first.subarray(n);
      pendingBytes -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = pending[0]!;
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.length) pending.shift();
      else pending[0] = c.subarray(k);
    }
    pendingBytes -= n;
    return out;
  };
  s.on("data", (chunk: Buffer) => {
    pending.push(chunk);
    pendingBytes += chunk.length;
    s.cork();
    for (;;) {
      if (need < 0) {
        if (pendingBytes < 4) break;
        const h = take(4);
        need = h.readUInt32LE(0);
        s.write(h);
      }
      if (pendingBytes < need) break;
      s.write(take(need));
      need = -1;
    }
    s.uncork();
  });
  s.on("error", () => undefined);
});
if (address.startsWith("unix:")) server.listen(address.slice(5), () => process.send!({ address }));
else server.listen(0, "127.0.0.1", () => process.send!({ address: `tcp://127.0.0.1:${(server.address() as net.AddressInfo).port}` }));

// Exit with the parent (also lets --cpu-prof write its profile).
process.on("disconnect", () => process.exit(0));
