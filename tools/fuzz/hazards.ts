// Hazards: the hostile ways a caller can hand arguments to the API and the
// hostile environments a process can run it in. Each kind can be switched
// off (driver --hazards / --no-<name>); all are on by default.
//
//   getters    option objects whose accessors, read mid-call, (a) close the
//              call's target, (b) close it and create a replacement of the
//              same kind (Linux reuses the lowest free fd, so a call that
//              read its fd before the getter would now reach the
//              replacement), or throw a sentinel that must come out as is;
//   reentrant  (c) accessors that call the same API on the same object
//              while the outer call is half done;
//   proxies    arrays with index getters and Proxies in place of arrays and
//              option objects;
//   workers    worker threads running a slice of random calls, a failing
//              native call in a tight loop, or a guest in vcpu.run(),
//              terminated at a random moment;
//   nofile     RLIMIT_NOFILE lowered to a few fds above what the child uses
//              (prlimit(1) on the child's own pid);
//   as         RLIMIT_AS lowered (the driver spawns the child under
//              `prlimit --as=...`). Never with a sanitized addon
//              (KVM_GMEM_ADDON set): ASan reserves terabytes of shadow memory.
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';

export const HAZARDS = ['getters', 'reentrant', 'proxies', 'workers', 'nofile', 'as'] as const;
export type HazardName = (typeof HAZARDS)[number];
export type HazardConfig = Record<HazardName, boolean>;

export function allHazards(on = true): HazardConfig {
  return Object.fromEntries(HAZARDS.map((h) => [h, on])) as HazardConfig;
}

/** "getters,workers" -> only those on; "all" / "none". */
export function parseHazards(list: string): HazardConfig {
  if (list === 'all') return allHazards(true);
  const cfg = allHazards(false);
  if (list === 'none' || list === '') return cfg;
  for (const name of list.split(',')) {
    if (!(HAZARDS as readonly string[]).includes(name)) throw new Error(`unknown hazard '${name}' (known: ${HAZARDS.join(', ')})`);
    cfg[name as HazardName] = true;
  }
  return cfg;
}

export function hazardList(cfg: HazardConfig): string {
  const on = HAZARDS.filter((h) => cfg[h]);
  return on.length === HAZARDS.length ? 'all' : on.length === 0 ? 'none' : on.join(',');
}

/** Thrown by a hostile accessor; the API must let it through unchanged. */
export class HazardSentinel extends Error {
  override name = 'HazardSentinel';
  constructor(where: string) {
    super(`hazard sentinel thrown by ${where}`);
  }
}

// ---- hostile values --------------------------------------------------------------

/** What a hostile accessor does when the API reads it. */
export interface Action {
  /** For the call's description: 'closes vm#2', 'replaces vcpu#1', ... */
  desc: string;
  run(): void;
}

/** Descriptions of hostile objects, so the call can be printed without touching their accessors. */
export const described = new WeakMap<object, string>();

/**
 * Turns `obj[key]` into an accessor that runs `action` on its `nth` read
 * (once) and returns the original value every time.
 */
export function withGetter<T extends object>(obj: T, key: PropertyKey, action: Action, nth = 1): T {
  const value = (obj as Record<PropertyKey, unknown>)[key as string];
  let reads = 0;
  Object.defineProperty(obj, key, {
    get() {
      if (++reads === nth) action.run();
      return value;
    },
    set() {},
    enumerable: true,
    configurable: true,
  });
  return obj;
}

/** A Proxy of `obj` that runs `action` on its `nth` property read (any key). */
export function proxied<T extends object>(obj: T, action: Action, nth: number): T {
  let reads = 0;
  const p = new Proxy(obj, {
    get(target, key, receiver) {
      if (++reads === nth) action.run();
      return Reflect.get(target, key, receiver);
    },
  });
  described.set(p, `Proxy(${describeShallow(obj)}; read #${nth} ${action.desc})`);
  return p;
}

/** An array whose element `index` is an accessor that runs `action` when read. */
export function arrayWithGetter<T>(items: T[], index: number, action: Action): T[] {
  const a = [...items];
  withGetter(a, String(index), action);
  described.set(a, `[${items.length} items; reading [${index}] ${action.desc}]`);
  return a;
}

/** An array whose `length` grows by `extra` (undefined holes) after the first read: a caller that reads length twice sees two answers. */
export function growingArray<T>(items: T[], extra: number): T[] {
  let reads = 0;
  const p = new Proxy([...items], {
    get(target, key, receiver) {
      if (key === 'length') return ++reads === 1 ? target.length : target.length + extra;
      return Reflect.get(target, key, receiver) as unknown;
    },
  });
  described.set(p, `Proxy([${items.length} items], length grows by ${extra} after the first read)`);
  return p;
}

function describeShallow(obj: object): string {
  if (Array.isArray(obj)) return `array(${obj.length})`;
  return `{${Object.keys(obj).join(', ')}}`;
}

// ---- rlimits -------------------------------------------------------------------------

/** Whether prlimit(1) (util-linux) can be run. */
export function havePrlimit(): boolean {
  try {
    execFileSync('prlimit', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Lowers this process's RLIMIT_NOFILE (soft and hard: nothing may raise it
 * back) to `headroom` above the highest fd open now. RLIMIT_NOFILE bounds
 * the fd number, not the count, so it is relative to the highest one.
 * Returns the limit set.
 */
export function lowerNofile(headroom: number): number {
  const highest = Math.max(...readdirSync('/proc/self/fd').map(Number));
  const limit = highest + 1 + headroom;
  execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${limit}:${limit}`], { stdio: 'ignore' });
  return limit;
}

// ---- worker threads ------------------------------------------------------------------

export type WorkerMode = 'slice' | 'failing-loop' | 'run' | 'run-sync-loop';

export interface WorkerPlan {
  mode: WorkerMode;
  /** Seed of the worker's own stream (its calls are replayable from it). */
  seed: number;
  /** Calls for 'slice'. */
  calls: number;
  /** Which failing call 'failing-loop' repeats. */
  variant: number;
  /** Terminate this long after the worker said it is ready (0: at once; -1: let a 'slice' finish). */
  terminateAfterMs: number;
  /** Leave its objects open when it finishes, for the addon's environment cleanup. */
  leaveOpen: boolean;
}

export interface WorkerOutcome {
  /** The worker's exit code (1 after terminate()). */
  exitCode: number;
  /** 'error' events: an exception that escaped the worker's script. */
  errors: unknown[];
  /** It did not become ready in time (it may have failed to start, e.g. under RLIMIT_NOFILE). */
  startFailed: string | null;
}

/**
 * Starts a worker thread with `plan`, terminates it at the planned moment
 * and waits for it to exit. A crash of the process here is what the driver
 * sees as this call's crash.
 */
export async function runWorker(script: URL, plan: WorkerPlan, extra: Record<string, unknown>): Promise<WorkerOutcome> {
  const { Worker } = await import('node:worker_threads');
  const errors: unknown[] = [];
  let worker: InstanceType<typeof Worker>;
  try {
    // stdout/stderr of the worker go to the process's (a crash message must reach the driver).
    worker = new Worker(script, { workerData: { ...extra, plan } });
  } catch (e) {
    return { exitCode: -1, errors, startFailed: `new Worker failed: ${String(e)}` };
  }
  worker.on('error', (e) => errors.push(e));
  const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
  const ready = new Promise<boolean>((resolve) => {
    worker.once('message', (m: unknown) => resolve(m === 'ready'));
    void exited.then(() => resolve(false));
  });
  const readyInTime = await within(ready, 5000, false);
  if (plan.terminateAfterMs >= 0) {
    if (plan.terminateAfterMs > 0) await new Promise((resolve) => setTimeout(resolve, plan.terminateAfterMs));
    await worker.terminate();
  }
  // Not exited 8 s after terminate() would be a hang: the driver's bound
  // fires while this waits for it for real.
  const exitCode = await exited;
  return { exitCode, errors, startFailed: readyInTime ? null : 'the worker never said it was ready' };
}

/** `p`, or `fallback` after `ms` (the timer is cleared either way: a pending one would keep the process alive). */
function within<T>(p: Promise<T>, ms: number, fallback: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((resolve) => (timer = setTimeout(() => resolve(fallback), ms)))]).finally(() => clearTimeout(timer));
}
