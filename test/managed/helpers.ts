/** Shared by the managed-mode tests: a temporary set-up socket path and the addon check. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { shmUnavailableReason } from "../../src/managed/native.js";

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
