/**
 * The worker protects itself from its plugins: it makes itself not dumpable
 * (prctl PR_SET_DUMPABLE 0), so a process of the same uid, a plugin even outside its
 * guest's confinement, can neither read /proc/<worker pid>/environ (the worker's secrets),
 * its memory, nor ptrace it. Only a process with CAP_SYS_PTRACE still can: that is why a
 * guest running as root drops every capability (casparian_guest/confine.py). The price: the
 * worker writes no core dump when it crashes.
 *
 * Node has no prctl; koffi (a maintained FFI with prebuilt binaries) calls libc's.
 */
import { createRequire } from "node:module";

const PR_GET_DUMPABLE = 3;
const PR_SET_DUMPABLE = 4;

/** The little of koffi's API used here. */
interface Koffi {
  load(path: string): { func(signature: string): (...args: number[]) => number };
}

export type Undumpable = { ok: true } | { ok: false; reason: string };

/** Make this process not dumpable; says why not when the platform or the kernel refuses. */
export function makeUndumpable(): Undumpable {
  if (process.platform !== "linux") return { ok: false, reason: `prctl is Linux only (this is ${process.platform})` };
  try {
    // Loaded here, not imported: without its prebuilt binary the worker runs on, dumpable, and says so.
    const koffi = createRequire(import.meta.url)("koffi") as Koffi;
    const prctl = koffi.load("libc.so.6").func("int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)");
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) !== 0) return { ok: false, reason: "prctl(PR_SET_DUMPABLE, 0) failed" };
    if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) !== 0) return { ok: false, reason: "the process is still dumpable after prctl(PR_SET_DUMPABLE, 0)" };
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: `cannot call prctl: ${(err as Error).message}` };
  }
}
