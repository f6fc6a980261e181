/**
 * The one place that loads managed mode's shared-memory addon (`addons/shm`, built by
 * `npm run build:shm`). Node can neither map a file shared with another process (a
 * SharedArrayBuffer is shared across worker_threads only) nor read a Unix socket's peer
 * credentials, so these two things go through a small binding. Loading is lazy (first call of
 * {@link shmNative}), cached, and never fatal at import: without the addon, managed mode fails
 * with KOALA_ERR_ADDON_UNAVAILABLE naming the build command.
 *
 * Looked for at `KOALA_SHM_ADDON` (an override: nothing else is tried), else
 * `addons/shm/build/Release/koala_shm.node`. `KOALA_NO_NATIVE=1` forbids loading it.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ErrorCode, KoalaError, type ErrorCodeValue } from "../errors.js";

/** The binding's ABI version this module speaks; the addon exports the same number. */
export const SHM_ABI_VERSION = 3;

/** Credentials of a Unix socket's peer, from the kernel (SO_PEERCRED): they cannot be forged. */
export interface PeerCredentials {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

/** What the addon exports. Arguments are checked in JavaScript before each call. */
export interface ShmBinding {
  readonly abiVersion: number;
  init(makeError: (code: string, message: string) => Error): void;
  /** Creates `path` (O_EXCL, O_NOFOLLOW, mode exactly 0600), sizes it to `bytes` and maps it shared. */
  create(path: string, bytes: number): ArrayBuffer;
  /** Maps an existing file after checking it is regular, owned by `uid`, mode 0600 (no group / other bits) and `bytes` long. */
  open(path: string, uid: number, bytes: number): ArrayBuffer;
  /** A memfd of `bytes` bytes sealed against shrinking, growing and resealing, mapped; its fd stays open until {@link closeFd}. */
  createSealed(name: string, bytes: number): { buffer: ArrayBuffer; fd: number };
  /** Maps `/proc/<pid>/fd/<fd>` after checking it is a regular file of `uid`, `bytes` long, sealed as createSealed seals. */
  openSealed(pid: number, fd: number, uid: number, bytes: number): ArrayBuffer;
  /** Closes a descriptor createSealed left open. */
  closeFd(fd: number): void;
  /** The peer of the connected Unix socket `fd`. */
  peerCredentials(fd: number): PeerCredentials;
  /** Writes one byte on socket `fd` without blocking; false when the peer is gone (a full buffer counts as written: a byte is pending). */
  wake(fd: number): boolean;
}

/** The build command named by every "addon unavailable" error. */
export const BUILD_COMMAND = "npm run build:shm";

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

let cached: { binding: ShmBinding } | { reason: string } | undefined;

const makeError = (code: string, message: string): Error => {
  const known = Object.values(ErrorCode) as string[];
  return new KoalaError((known.includes(code) ? code : ErrorCode.SYSTEM) as ErrorCodeValue, message);
};

function load(): { binding: ShmBinding } | { reason: string } {
  if (process.env.KOALA_NO_NATIVE === "1") return { reason: "KOALA_NO_NATIVE=1 forbids loading the shared-memory addon" };
  if (process.platform !== "linux") return { reason: `managed mode is Linux only (this is ${process.platform})` };
  const override = process.env.KOALA_SHM_ADDON;
  const path = override !== undefined && override !== "" ? override : join(packageRoot, "addons", "shm", "build", "Release", "koala_shm.node");
  if (!existsSync(path)) return { reason: `shared-memory addon not built (${BUILD_COMMAND}); looked at ${path}` };
  let binding: ShmBinding;
  try {
    binding = createRequire(import.meta.url)(path) as ShmBinding;
  } catch (err) {
    return { reason: `shared-memory addon at ${path} failed to load: ${(err as Error).message} (${BUILD_COMMAND})` };
  }
  if (binding.abiVersion !== SHM_ABI_VERSION) return { reason: `shared-memory addon at ${path} speaks ABI ${String(binding.abiVersion)}, this code ${SHM_ABI_VERSION} (${BUILD_COMMAND})` };
  binding.init(makeError);
  return { binding };
}

/** Why the addon cannot be used, or undefined when it can. */
export function shmUnavailableReason(): string | undefined {
  cached ??= load();
  return "reason" in cached ? cached.reason : undefined;
}

/** The loaded binding; throws KOALA_ERR_ADDON_UNAVAILABLE with the reason (naming `npm run build:shm`) when there is none. */
export function shmNative(): ShmBinding {
  cached ??= load();
  if ("reason" in cached) throw new KoalaError(ErrorCode.ADDON_UNAVAILABLE, `managed mode needs the shared-memory addon: ${cached.reason}`);
  return cached.binding;
}

const MAX_MAP_BYTES = 2 ** 31;

function checkPath(fn: string, path: unknown): string {
  if (typeof path !== "string" || path === "" || path.includes("\0") || Buffer.byteLength(path) > 4095) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${fn}: a path must be a non-empty string without NUL, at most 4095 bytes`);
  }
  return path;
}

function checkBytes(fn: string, bytes: unknown): number {
  if (typeof bytes !== "number" || !Number.isInteger(bytes) || bytes < 4096 || bytes > MAX_MAP_BYTES || bytes % 4096 !== 0) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${fn}: bytes must be a multiple of 4096 in 4096..${MAX_MAP_BYTES}, got ${String(bytes)}`);
  }
  return bytes;
}

/** Creates a new 0600 file at `path` of `bytes` bytes and maps it; the buffer's memory is the mapping, unmapped when the buffer is collected. */
export function createSharedMemory(path: string, bytes: number): ArrayBuffer {
  return shmNative().create(checkPath("createSharedMemory()", path), checkBytes("createSharedMemory()", bytes));
}

/** Maps the file at `path` made by a peer whose uid is `uid`; KOALA_ERR_ACCESS_DENIED unless it is a regular 0600 file of that owner and size. */
export function openSharedMemory(path: string, uid: number, bytes: number): ArrayBuffer {
  if (!Number.isInteger(uid) || uid < 0 || uid > 0xffffffff) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `openSharedMemory(): uid must be an integer, got ${String(uid)}`);
  return shmNative().open(checkPath("openSharedMemory()", path), uid, checkBytes("openSharedMemory()", bytes));
}

/**
 * Creates the memory of a ring pair: a memfd (no name in any file system) of `bytes` bytes,
 * sealed so that nobody, its creator included, can shrink or grow it (a mapping whose file
 * shrinks raises SIGBUS in whoever touches it: a hostile application could crash the daemon).
 * The descriptor stays open for the peer to open through /proc until `closeFd`.
 */
export function createSealedMemory(bytes: number): { buffer: ArrayBuffer; fd: number } {
  return shmNative().createSealed("koala-rings", checkBytes("createSealedMemory()", bytes));
}

/** Maps the sealed memory at descriptor `fd` of process `pid` (uid `uid`); KOALA_ERR_ACCESS_DENIED unless it is a memfd of that owner and size with the seals of {@link createSealedMemory}. */
export function openSealedMemory(pid: number, fd: number, uid: number, bytes: number): ArrayBuffer {
  for (const [k, v] of [["pid", pid], ["fd", fd], ["uid", uid]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `openSealedMemory(): ${k} must be a non-negative 31-bit integer, got ${String(v)}`);
  }
  return shmNative().openSealed(pid, fd, uid, checkBytes("openSealedMemory()", bytes));
}

/** Closes a descriptor {@link createSealedMemory} left open. */
export function closeFd(fd: number): void {
  shmNative().closeFd(fd);
}

/** The file descriptor behind a connected `net.Socket` (Node keeps it on its handle), or -1. */
export function socketFd(socket: object): number {
  const fd = (socket as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === "number" && fd >= 0 ? fd : -1;
}

/** The kernel's credentials of the peer of connected Unix socket `fd`. */
export function peerCredentials(fd: number): PeerCredentials {
  if (!Number.isInteger(fd) || fd < 0) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `peerCredentials(): fd must be a non-negative integer, got ${String(fd)}`);
  return shmNative().peerCredentials(fd);
}
