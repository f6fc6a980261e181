/** Shared by the managed-mode tests: a temporary set-up socket path and the addon check. */
import { mkdtempSync, rmSync } from "node:fs";
import { createConnection, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { closeFd, createSealedMemory, shmUnavailableReason } from "../../src/managed/native.js";
import { formatRingPair, ringPairBytes } from "../../src/managed/ring.js";
import { ShmConnection } from "../../src/managed/shm-connection.js";
import { resolveTransportOptions } from "../../src/transport/options.js";

/** Why the shared-memory addon cannot be used (tests skip then), or undefined. KOALA_REQUIRE_NATIVE=1 turns a missing addon into a failure. */
export function addonMissing(): string | undefined {
  const why = shmUnavailableReason();
  if (why !== undefined && process.env.KOALA_REQUIRE_NATIVE === "1") throw new Error(`KOALA_REQUIRE_NATIVE=1 but ${why}`);
  return why;
}

/** A fresh 0700 folder for a daemon's set-up socket, and its removal. */
export function socketDir(): { path: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "koala-managed-"));
  return { path: join(dir, "daemon.sock"), remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Two connected Unix sockets (a client end and the accepted end) in a fresh folder, and their clean-up. */
export async function socketPair(): Promise<{ a: Socket; b: Socket; done: () => void }> {
  const dir = socketDir();
  const server = createServer();
  await new Promise<void>((r) => server.listen(dir.path, r));
  const accepted = new Promise<Socket>((r) => server.once("connection", r));
  const a = createConnection(dir.path);
  await new Promise((r) => a.once("connect", r));
  const b = await accepted;
  return { a, b, done: () => void server.close(() => dir.remove()) };
}

/** An application end and a daemon end of one ring pair over a sealed memfd and a socket pair (adaptive polling capped at `pollMaxUs`; 0: none), and their clean-up. */
export async function connectionPair(ringBytes = 64 * 1024, pollMaxUs = 0): Promise<{ app: ShmConnection; daemon: ShmConnection; done: () => void }> {
  const { buffer, fd } = createSealedMemory(ringPairBytes(ringBytes));
  closeFd(fd);
  formatRingPair(buffer, ringBytes);
  const { a, b, done } = await socketPair();
  const options = resolveTransportOptions("test", {});
  const common = { memory: buffer, ringBytes, poll: { mode: "adaptive" as const, maxUs: pollMaxUs }, options, localAddress: "shm:test", remoteAddress: "shm:test" };
  const app = new ShmConnection({ ...common, side: "app", socket: a, copyReceived: true });
  const daemon = new ShmConnection({ ...common, side: "daemon", socket: b, copyReceived: false });
  return {
    app,
    daemon,
    done: () => {
      app.close();
      daemon.close();
      done();
    },
  };
}
