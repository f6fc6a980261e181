/**
 * CPU time of this process, all of it and its JavaScript (main) thread's alone. On an RDMA NIC
 * the transfer is the NIC's: what stays on a CPU is the JavaScript thread's work, so the RDMA
 * figures are read on that thread; the process figure also counts srnic's service thread (the
 * software NIC), V8's helper threads and libuv's pool.
 */
import { readFileSync } from "node:fs";

/** CPU time so far, in µs. */
export interface CpuTimes {
  /** User + system time of the whole process. */
  micros: number;
  /** User + system time of the main thread (Linux: /proc; elsewhere the whole process). */
  jsMicros: number;
}

/** Clock ticks per second of /proc's times (USER_HZ, 100 on Linux). */
const TICKS_PER_SECOND = 100;

/** The main thread's CPU time in µs from /proc, or undefined where there is no /proc. */
export function mainThreadCpuMicros(): number | undefined {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, "utf8");
    // utime and stime are fields 14 and 15, the 12th and 13th after the command name "(…)".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

/** This process's CPU time so far. */
export function cpuTimes(): CpuTimes {
  const u = process.cpuUsage();
  const micros = u.user + u.system;
  return { micros, jsMicros: mainThreadCpuMicros() ?? micros };
}
