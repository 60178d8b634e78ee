// The operations of the fuzz campaign, grouped by the object they act on:
// values, state, Kvm, Vm, GuestMemfd, Memslot, Mapping, Vcpu, Guest,
// Assembler, raw, and the hazard-only calls (close anything, worker threads).
//
// Each generator draws everything it needs from the call's Rng first, then
// returns a Call: a name, a description printed before the call runs (so a
// crash names it), and run(). The same seed gives the same calls as long as
// the outcomes are the same (timing-dependent outcomes, like where a kicked
// guest stopped, can make a replay diverge later on).
//
// What the campaign does NOT do, on purpose:
//   - raw.* only ever gets fds of objects this process owns (as objects, so a
//     closed one is a ClosedError, never a reused fd number), and raw memslot
//     requests go to raw VMs only (a raw slot on a Vm would desync its table,
//     as docs/rules.md says of the raw layer). Their userspace_addr is 0, unaligned, beyond the
//     user address space or the harness's own probe page: raw is unchecked,
//     and an address inside the process could let KVM write into it.
//   - Accepted memslot sizes stay at or below 8 GiB + 8 KiB: on this kvm_pvm
//     host a 2^31-1-page slot took 56 s and 21 GB of kernel memory (measured).
//     Sizes above 2^43 bytes (rejected by the memslot-too-large rule) are used.
//   - GuestMemfd.allocate() and raw fallocate never really allocate more
//     than 1 MiB per call (a longer valid range is cut to 1 MiB); ranges the
//     rules or the kernel refuse are sent as drawn.
//   - vCPU runs always have a deadline (runSync/run without one could spin
//     forever in a guest that never exits, which is not a bug).
//   - Mapping.sharedFile is not given guest_memfd fds made without
//     init-shared (the kernel raises SIGBUS on every access by design there;
//     GuestMemfd.map() is the guarded way and is fuzzed), nor a length past
//     a vCPU fd's kvm_run area (SIGBUS there too). Regular files are given
//     with any length: past their end must be an error, never a SIGBUS.
//   - vm.enableCap / raw.enableCap get KVM_CAP_EXIT_HYPERCALL or unknown cap
//     numbers only: other caps change how a VM runs, not what the API does.
import * as lib from '../../lib/index.js';
import { Assembler, Guest, type GuestMemfd, Kvm, Mapping, type Memslot, mem, offset, raw, type Regs, type Sregs, type Vcpu, type Vm } from '../../lib/index.js';
import {
  type Action,
  arrayWithGetter,
  described,
  growingArray,
  type HazardConfig,
  HazardSentinel,
  proxied,
  runWorker,
  withGetter,
  type WorkerMode,
  type WorkerPlan,
} from './hazards.js';
import type { Rng } from './prng.js';

const PAGE = 4096;
const G4 = 2 ** 32;
const MIB = 1 << 20;
const BIG = 1 << 30;

// ---- values ------------------------------------------------------------------------------

/** Values of the wrong type or out of range for any integer argument. */
function badValue(r: Rng): unknown {
  return r.pick<unknown>([
    -1,
    -PAGE,
    1.5,
    NaN,
    Infinity,
    -Infinity,
    '4096',
    '0x1000',
    '',
    null,
    undefined,
    {},
    [],
    [4096],
    true,
    false,
    Symbol('x'),
    () => 4096,
    2 ** 64,
    Number.MAX_VALUE,
    -1n,
    1n << 64n,
    (1n << 64n) + 4096n,
    new Number(4096),
    { valueOf: () => 4096 },
  ]);
}

function u64Edge(r: Rng): number | bigint {
  return r.pick<number | bigint>([
    G4 - PAGE,
    G4,
    G4 + PAGE,
    2 ** 52 - PAGE,
    2 ** 52,
    2 ** 53 - PAGE,
    2 ** 53,
    2 ** 53 + 2 * PAGE /* not exact */,
    2n ** 53n,
    2n ** 53n + 4096n,
    (1n << 63n) - 4096n,
    1n << 63n,
    (1n << 63n) + 4096n,
    (1n << 64n) - 4096n,
    (1n << 64n) - 1n,
  ]);
}

function pages(r: Rng, max: number): number {
  return r.range(1, max) * PAGE;
}

function gpaValue(r: Rng, near: Memslot[]): unknown {
  return r.weighted<() => unknown>([
    [30, () => r.int(512) * PAGE],
    [
      near.length > 0 ? 12 : 0,
      () => {
        const s = r.pick(near);
        return Math.max(0, (s.deleted ? 0 : s.gpa) + r.pick([-2, -1, 0, 1, 2]) * PAGE + r.pick([0, 0, s.deleted ? 0 : s.size]));
      },
    ],
    [8, () => G4 + r.range(-2, 2) * PAGE],
    [8, () => u64Edge(r)],
    [4, () => r.int(512) * PAGE + r.range(1, PAGE - 1)],
    [4, () => BigInt(r.int(512) * PAGE)],
    [3, () => badValue(r)],
  ])();
}

/** Memslot sizes: small, around 4 GiB (valid), rejected huge ones, bad ones; never a valid size above 8 GiB (see the header). */
function slotSize(r: Rng, allowBig: boolean): unknown {
  return r.weighted<() => unknown>([
    [40, () => pages(r, 64)],
    [4, () => 0],
    [4, () => pages(r, 8) + r.range(1, PAGE - 1)],
    [allowBig ? 8 : 0, () => r.pick([G4 - PAGE, G4, G4 + PAGE, 0x100001000, 0x100002000, 2 ** 33, 2n ** 32n + 4096n])],
    [5, () => r.pick<unknown>([2 ** 43, 2 ** 43 + PAGE, 2 ** 53 - PAGE, 2n ** 53n, 1n << 63n, (1n << 64n) - 4096n, (1n << 64n) - 1n])],
    [3, () => BigInt(pages(r, 16))],
    [3, () => badValue(r)],
  ])();
}

function gmemSize(r: Rng): unknown {
  return r.weighted<() => unknown>([
    [30, () => pages(r, 64)],
    [5, () => 0],
    [6, () => r.pick([G4 - PAGE, G4, G4 + PAGE])],
    [5, () => u64Edge(r)],
    [4, () => pages(r, 4) + r.range(1, PAGE - 1)],
    [3, () => BigInt(pages(r, 16))],
    [3, () => badValue(r)],
  ])();
}

/** Guest memfd create flags: names, bit masks (bits 32..63 too), and bad forms. */
function gmemFlags(c: Ctx, target: Vm): unknown {
  const r = c.rng;
  return r.weighted<() => unknown>([
    [20, () => ['mmap', 'init-shared']],
    [10, () => []],
    [6, () => ['mmap']],
    [3, () => ['init-shared']],
    [2, () => ['bogus']],
    [2, () => ['mmap', 'mmap', 'init-shared']],
    [6, () => r.pick<unknown>([0, 1, 2, 3, 4, 0x80000000, 2 ** 32, 2 ** 32 + 1, 2 ** 40, 2 ** 63, -1, 1.5])],
    [3, () => r.pick<unknown>([1n, 3n, 1n << 32n, 1n << 63n, (1n << 64n) - 1n])],
    [2, () => r.pick<unknown>(['mmap', null, undefined, {}, 'init-shared'])],
    [c.hz.proxies ? 4 : 0, () => c.hostileArray(['mmap', 'init-shared'], target, () => target.createGuestMemfd({ size: PAGE }))],
  ])();
}

/** A safe number or bigint as a bigint, else null. */
function asU64(v: unknown): bigint | null {
  if (typeof v === 'bigint') return v >= 0n && v < 1n << 64n ? v : null;
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  return null;
}

/** Cuts a range the kernel would really allocate to 1 MiB (see the header); anything refused is left as drawn. */
function clampAlloc(fileSize: number, off: unknown, len: unknown): unknown {
  const o = asU64(off);
  const l = asU64(len);
  if (o === null || l === null || o % 4096n !== 0n || l % 4096n !== 0n || l === 0n || o + l > BigInt(fileSize)) return len;
  if (l <= BigInt(MIB)) return len;
  return typeof len === 'bigint' ? BigInt(MIB) : MIB;
}

function fileOffset(r: Rng, size: number): unknown {
  return r.weighted<() => unknown>([
    [20, () => r.int(Math.min(size, 64 * PAGE) / PAGE + 2) * PAGE],
    [4, () => Math.max(0, size - PAGE)],
    [5, () => r.range(1, PAGE - 1)],
    [5, () => u64Edge(r)],
    [3, () => badValue(r)],
  ])();
}

function fileLength(r: Rng): unknown {
  return r.weighted<() => unknown>([
    [20, () => pages(r, 32)],
    [4, () => 0],
    [6, () => r.pick<unknown>([G4, 0x100001000, 2 ** 53 - PAGE, 1n << 62n, 1n << 63n, (1n << 64n) - 4096n])],
    [3, () => pages(r, 4) + 7],
    [3, () => badValue(r)],
  ])();
}

function mappingLength(r: Rng, allowBig: boolean): unknown {
  return r.weighted<() => unknown>([
    [20, () => pages(r, 16)],
    [3, () => 0],
    [allowBig ? 6 : 0, () => r.pick<unknown>([G4 - PAGE, G4, G4 + PAGE, 0x100001000, 2 ** 40, 2n ** 32n + 4096n])],
    [3, () => r.pick<unknown>([2 ** 47, 2 ** 53 - PAGE, 2 ** 53, (1n << 64n) - 4096n])],
    [3, () => pages(r, 4) + r.range(1, PAGE - 1)],
    [3, () => badValue(r)],
  ])();
}

/** Touches the first and last byte of a view (read, write back): a mapping past the end of its file raises SIGBUS here. */
function touch(v: unknown, st: State): void {
  if (v instanceof Uint8Array || v instanceof DataView) st.keep(st.views, v, 16);
  if (v instanceof Uint8Array && v.length > 0) {
    v[0] = v[0] as number;
    v[v.length - 1] = v[v.length - 1] as number;
  } else if (v instanceof DataView && v.byteLength > 0) {
    v.setUint8(0, v.getUint8(0));
    v.setUint8(v.byteLength - 1, v.getUint8(v.byteLength - 1));
  }
}

// ---- describing calls without touching hostile accessors ------------------------------------

export function show(v: unknown, st?: State, depth = 0): string {
  if (typeof v === 'bigint') return `0x${v.toString(16)}n`;
  if (typeof v === 'number') return Number.isInteger(v) && Math.abs(v) >= 4096 ? (v < 0 ? `-0x${(-v).toString(16)}` : `0x${v.toString(16)}`) : String(v);
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 20)}...(${v.length} chars)` : v);
  if (typeof v === 'symbol') return 'Symbol()';
  if (typeof v === 'function') return 'fn';
  if (v === null || v === undefined) return String(v);
  const obj = v as object;
  const d = described.get(obj);
  if (d !== undefined) return d;
  const name = st?.names.get(obj);
  if (name !== undefined) return name;
  if (depth > 2) return '{...}';
  if (Array.isArray(obj)) {
    const items = Object.getOwnPropertyDescriptors(obj);
    const shown: string[] = [];
    for (let i = 0; i < Math.min(obj.length, 6); i++) {
      const p = items[i];
      shown.push(p === undefined ? '<hole>' : 'get' in p && p.get !== undefined ? '<getter>' : show(p.value, st, depth + 1));
    }
    return `[${shown.join(', ')}${obj.length > 6 ? `, ... (${obj.length})` : ''}]`;
  }
  if (obj instanceof Number) return `new Number(${show(obj.valueOf())})`;
  const parts: string[] = [];
  for (const [k, p] of Object.entries(Object.getOwnPropertyDescriptors(obj))) {
    parts.push(p.get !== undefined ? `get ${k}()` : `${k}: ${show(p.value, st, depth + 1)}`);
  }
  return `{${parts.join(', ')}}`;
}

// ---- state ----------------------------------------------------------------------------------

type Kind = 'kvm' | 'vm' | 'gmem' | 'slot' | 'map' | 'vcpu' | 'guest' | 'rawvm' | 'rawgmem' | 'asm';

/** Every object the calls made, by kind, with names for the descriptions and the VM each belongs to. */
export class State {
  readonly kvms: Kvm[] = [];
  readonly vms: Vm[] = [];
  readonly gmems: GuestMemfd[] = [];
  readonly slots: Memslot[] = [];
  readonly maps: Mapping[] = [];
  readonly vcpus: Vcpu[] = [];
  readonly guests: Guest[] = [];
  readonly rawVms: lib.raw.RawFd[] = [];
  readonly rawGmems: { fd: lib.raw.RawFd; size: number; vm: lib.raw.RawFd | Vm }[] = [];
  readonly asms: Assembler[] = [];
  readonly names = new WeakMap<object, string>();
  readonly parent = new WeakMap<object, Vm>();
  readonly vcpusMade = new WeakMap<Vm, number>();
  readonly lastRegs = new WeakMap<Vcpu, Regs>();
  readonly lastSregs = new WeakMap<Vcpu, Sregs>();
  readonly usedIds = new Set<number>();
  /** Views made by earlier calls: touched later, after their memory may be gone (they must have detached). */
  readonly views: (Uint8Array | DataView)[] = [];
  /** Exits of earlier runs: their data views and ret accessor point into kvm_run. */
  readonly exits: lib.VcpuExit[] = [];
  /** vCPUs of Guests whose program spins: a run of theirs lasts until its deadline. */
  readonly spinners = new WeakSet<Vcpu>();
  #n = 0;

  constructor(
    /** Harness files for 'fd' backings and sharedFile (sizes fixed at creation: never shrunk, so no SIGBUS is the harness's doing). */
    readonly files: readonly { fd: number; size: number }[],
    readonly probeAddr: bigint,
  ) {}

  list(kind: Kind): object[] {
    switch (kind) {
      case 'kvm':
        return this.kvms;
      case 'vm':
        return this.vms;
      case 'gmem':
        return this.gmems;
      case 'slot':
        return this.slots;
      case 'map':
        return this.maps;
      case 'vcpu':
        return this.vcpus;
      case 'guest':
        return this.guests;
      case 'rawvm':
        return this.rawVms;
      case 'rawgmem':
        return this.rawGmems;
      case 'asm':
        return this.asms;
    }
  }

  add<T extends object>(kind: Kind, obj: T, parent?: Vm): T {
    if (this.names.has(obj)) return obj;
    this.names.set(obj, `${kind}#${++this.#n}`);
    if (parent !== undefined) this.parent.set(obj, parent);
    const list = this.list(kind);
    list.push(obj);
    // Keep a few closed objects (use after close is a case too), drop the
    // oldest closed one. A live one is never dropped: closeAll() must reach it.
    if (list.length > 40) {
      const i = list.findIndex((o) => isClosed(o));
      if (i >= 0) list.splice(i, 1);
    }
    return obj;
  }

  /** Remembers `v` in `list`, keeping the newest `max`. */
  keep<T>(list: T[], v: T, max: number): void {
    list.push(v);
    if (list.length > max) list.shift();
  }

  name(obj: object | undefined | null): string {
    return obj ? (this.names.get(obj) ?? '?') : String(obj);
  }

  live<T extends object>(list: readonly T[]): T[] {
    return list.filter((o) => !isClosed(o));
  }

  /** Closes everything, children before parents (each close is idempotent). */
  closeAll(): unknown[] {
    const errors: unknown[] = [];
    const run = (f: () => void): void => {
      try {
        f();
      } catch (e) {
        errors.push(e);
      }
    };
    for (const g of this.guests) run(() => g.close());
    for (const v of this.vcpus) run(() => v.close());
    for (const m of this.maps) run(() => m.unmap());
    for (const s of this.slots) run(() => s.delete());
    for (const g of this.gmems) run(() => g.close());
    for (const g of this.rawGmems) run(() => g.fd.close());
    for (const v of this.rawVms) run(() => v.close());
    for (const v of this.vms) run(() => v.close());
    for (const k of this.kvms) run(() => k.close());
    return errors;
  }
}

function isClosed(o: object): boolean {
  const x = o as { closed?: unknown; deleted?: unknown; unmapped?: unknown };
  const inner = Object.getOwnPropertyDescriptor(o, 'fd')?.value as unknown;
  if (typeof inner === 'object' && inner !== null) return isClosed(inner); // rawGmems entries: { fd: RawFd, ... }
  try {
    if (typeof x.closed === 'boolean') return x.closed;
    if (typeof x.deleted === 'boolean') return x.deleted;
    if (typeof x.unmapped === 'boolean') return x.unmapped;
  } catch {
    return true;
  }
  return false;
}

// ---- the call's context -----------------------------------------------------------------------

export interface Call {
  name: string;
  desc: string;
  run(): unknown;
}

/** A replacement vCPU made by a hostile accessor, with the state it had then: a redirected call would change it. */
export interface Replacement {
  vcpu: Vcpu;
  regs: Regs;
  sregs: Sregs;
  desc: string;
}

export class Ctx {
  /** VMs whose memslot table this call may have changed (probed afterwards). */
  readonly touched = new Set<Vm>();
  /** Objects created during the call (their fds must be close-on-exec). */
  readonly created: object[] = [];
  /** Errors of secondary calls (re-entrant ones, a concurrent run()): checked like the call's own. */
  readonly observed: { label: string; error: unknown }[] = [];
  readonly replacements: Replacement[] = [];
  /** Set by the worker-thread call: the driver's check compares fds and mappings around it. */
  workerCall = false;
  /** Wrong answers found by an oracle (checkExtensions vs checkExtension). */
  readonly wrong: string[] = [];

  constructor(
    readonly rng: Rng,
    readonly st: State,
    readonly hz: HazardConfig,
    readonly env: { inWorker: boolean; outFd: number; threadScript: URL; addressSpaceLimited?: boolean; nofileLimited?: boolean },
  ) {}

  add<T extends object>(kind: Kind, obj: T, parent?: Vm): T {
    this.st.add(kind, obj, parent);
    this.created.push(obj);
    if (kind === 'vm') this.touched.add(obj as unknown as Vm);
    return obj;
  }

  observe(label: string, error: unknown): void {
    this.observed.push({ label, error });
  }

  /** Promises of secondary calls: the call is over when they are settled. */
  readonly pending: Promise<unknown>[] = [];

  /** Runs a secondary call, recording its error instead of throwing it. */
  secondary(label: string, f: () => unknown): void {
    try {
      const r = f();
      if (r instanceof Promise) this.pending.push(r.catch((e: unknown) => this.observe(label, e)));
    } catch (e) {
      this.observe(label, e);
    }
  }

  /** A timer whose callback runs a secondary call; the call waits for it (or clears it) before it is over. */
  later(ms: number, label: string, f: () => unknown): void {
    this.pending.push(
      new Promise<void>((resolve) =>
        setTimeout(() => {
          this.secondary(label, f);
          resolve();
        }, ms),
      ),
    );
  }

  // ---- hostile actions ----

  /**
   * What a hostile accessor on an argument of a call on `target` does: close
   * it, close and replace it, call the API again (`reenter`), or throw.
   * null when no hazard applies.
   */
  action(target: object, reenter?: () => unknown): Action | null {
    const r = this.rng;
    const name = this.st.name(target);
    const choices: [number, () => Action][] = [];
    if (this.hz.getters && closeable(target)) {
      choices.push([3, () => ({ desc: `closes ${name}`, run: () => closeAny(target) })]);
      choices.push([4, () => ({ desc: `closes ${name} and creates a replacement`, run: () => this.replace(target) })]);
    }
    // The target's VM, which closes the target with it (and whose fd number a new VM takes).
    const parent = this.st.parent.get(target);
    if (this.hz.getters && parent !== undefined) {
      const pname = this.st.name(parent);
      choices.push([1, () => ({ desc: `closes ${pname} (${name}'s VM)`, run: () => parent.close() })]);
      choices.push([1, () => ({ desc: `closes ${pname} (${name}'s VM) and creates a replacement VM`, run: () => this.replace(parent) })]);
    }
    if (this.hz.getters) {
      choices.push([
        1,
        () => ({
          desc: 'throws a sentinel',
          run: () => {
            throw new HazardSentinel(`an accessor (target ${name})`);
          },
        }),
      ]);
    }
    if (this.hz.reentrant && reenter !== undefined) {
      choices.push([4, () => ({ desc: `calls ${name} again (re-entrant)`, run: () => this.secondary('re-entrant call', reenter) })]);
    }
    if (choices.length === 0) return null;
    return r.weighted(choices)();
  }

  /** Maybe makes `obj` hostile: an accessor on one of `keys`, or (proxies) a Proxy. Returns the object to pass and a note. */
  hostile<T extends object>(obj: T, target: object, reenter?: () => unknown, p = 0.2): { value: T; note: string } {
    if (!this.rng.chance(p)) return { value: obj, note: '' };
    const act = this.action(target, reenter);
    if (act === null) return { value: obj, note: '' };
    const keys = Object.keys(obj);
    if (this.hz.proxies && (keys.length === 0 || this.rng.chance(0.3))) {
      const nth = this.rng.range(1, 4);
      return { value: proxied(obj, act, nth), note: ` [Proxy: property read #${nth} ${act.desc}]` };
    }
    if (keys.length === 0) return { value: obj, note: '' };
    const key = this.rng.pick(keys);
    return { value: withGetter(obj, key, act), note: ` [getter '${key}' ${act.desc}]` };
  }

  /** An array (of caps, flags, args, entries...) with one hostile element, a length that changes, or a Proxy. */
  hostileArray<T>(items: T[], target: object, reenter?: () => unknown): T[] {
    const act = this.action(target, reenter) ?? { desc: 'does nothing', run: () => {} };
    const r = this.rng;
    return r.weighted<() => T[]>([
      [4, () => (items.length > 0 ? arrayWithGetter(items, r.int(items.length), act) : items)],
      [2, () => growingArray(items, r.pick([1, 3, 1000]))],
      [3, () => proxied([...items], act, r.range(1, 3))],
    ])();
  }

  /** Closes `target` and creates an object of the same kind in its place (the fd number is reused). */
  replace(target: object): void {
    const st = this.st;
    if (target instanceof Kvm) {
      target.close();
      this.add('kvm', Kvm.open());
    } else if (target instanceof lib.Vm) {
      // The Kvm must exist before the close, or its open would take the freed fd.
      const kvm = st.live(st.kvms)[0] ?? this.add('kvm', Kvm.open());
      target.close();
      this.add('vm', kvm.createVm());
    } else if (target instanceof lib.GuestMemfd) {
      const vm = st.parent.get(target);
      target.close();
      if (vm !== undefined && !vm.closed) this.add('gmem', vm.createGuestMemfd({ size: target.size, flags: target.flagBits }), vm);
    } else if (target instanceof lib.Vcpu) {
      const vm = st.parent.get(target);
      target.close();
      if (vm !== undefined && !vm.closed) {
        const id = (st.vcpusMade.get(vm) ?? 0) + 1;
        st.vcpusMade.set(vm, id);
        const v = this.add('vcpu', vm.createVcpu(id + 100), vm);
        // Its state now: if the call on the closed vCPU reaches it, this changes.
        this.replacements.push({ vcpu: v, regs: v.getRegs(), sregs: v.getSregs(), desc: `${st.name(v)} replacing ${st.name(target)}` });
      }
    } else if (target instanceof Mapping) {
      const len = target.length;
      target.unmap();
      this.add('map', Mapping.anonymousShared(Math.min(len, 16 * PAGE)));
    } else {
      closeAny(target);
    }
  }
}

function closeAny(o: object): void {
  const inner = Object.getOwnPropertyDescriptor(o, 'fd')?.value as unknown;
  if (o instanceof Mapping) o.unmap();
  else if (o instanceof lib.Memslot) o.delete();
  else if (inner instanceof lib.raw.RawFd) inner.close();
  else (o as { close(): void }).close();
}

/** Whether closeAny() can close it (an Assembler cannot). */
function closeable(o: object): boolean {
  return (
    o instanceof Mapping ||
    o instanceof lib.Memslot ||
    typeof (o as { close?: unknown }).close === 'function' ||
    Object.getOwnPropertyDescriptor(o, 'fd')?.value instanceof lib.raw.RawFd
  );
}

// ---- helpers to pick objects ---------------------------------------------------------------------

function anyOf<T extends object>(c: Ctx, list: readonly T[], liveBias = 0.9): T | null {
  if (list.length === 0) return null;
  const live = c.st.live(list);
  if (live.length > 0 && c.rng.chance(liveBias)) return c.rng.pick(live);
  return c.rng.pick(list);
}

function vmOf(c: Ctx, o: object): Vm | undefined {
  const vm = c.st.parent.get(o);
  if (vm !== undefined) c.touched.add(vm);
  return vm;
}

function freeGpa(vm: Vm): number {
  const top = vm.memslots().reduce((m, s) => Math.max(m, s.gpa + s.size), 0);
  return Math.min(top, 2 ** 40) + 16 * PAGE;
}

function call(name: string, desc: string, run: () => unknown): Call {
  return { name, desc, run };
}

// ---- Kvm ------------------------------------------------------------------------------------------

const CAP_VALUES = Object.values(lib.Cap) as number[];
const CAP_NAMES = Object.keys(lib.Cap);

function capValue(r: Rng): unknown {
  return r.weighted<() => unknown>([
    [10, () => r.pick(CAP_VALUES)],
    [6, () => r.pick(CAP_NAMES)],
    [3, () => r.pick<unknown>([0, 1, 9999, 2 ** 31 - 1, 2 ** 31, 2 ** 32])],
    [3, () => r.pick<unknown>(['NOPE', '', 'constructor', '__proto__', 'toString', -1, 1.5, NaN, 5n, null, undefined, {}])],
  ])();
}

function kvmOpen(c: Ctx): Call | null {
  if (c.st.live(c.st.kvms).length >= 3) return null;
  const path = c.rng.weighted<unknown>([
    [12, undefined],
    [6, '/dev/kvm'],
    [1, '/nonexistent/kvm'],
    [1, '/dev/null'],
    [1, '/'],
    [1, '/proc/self/status'],
    [1, ''],
    [1, 'x'.repeat(5000)],
    [1, 42],
    [1, null],
    [1, '/dev/kvm\0junk'],
  ]);
  return call('Kvm.open', `Kvm.open(${path === undefined ? '' : show(path)})`, () => {
    c.add('kvm', path === undefined ? Kvm.open() : Kvm.open(path as string));
  });
}

type CapTarget = Kvm | Vm;

function capTarget(c: Ctx): CapTarget | null {
  const t = c.rng.chance(0.5) ? anyOf(c, c.st.kvms) : anyOf(c, c.st.vms);
  return t ?? anyOf(c, c.st.kvms) ?? anyOf(c, c.st.vms);
}

function checkExtension(c: Ctx): Call | null {
  const t = capTarget(c);
  if (t === null) return null;
  const cap = capValue(c.rng);
  if (t instanceof lib.Vm) c.touched.add(t);
  return call('checkExtension', `${c.st.name(t)}.checkExtension(${show(cap)})`, () => t.checkExtension(cap as number));
}

function checkExtensions(c: Ctx): Call | null {
  const t = capTarget(c);
  if (t === null) return null;
  const r = c.rng;
  const n = r.weighted([
    [10, r.int(12)],
    [3, r.range(12, 40)],
    [1, 5000],
    [1, 0],
  ]);
  const plain = Array.from({ length: n }, () => (r.chance(0.9) ? r.pick(CAP_VALUES) : capValue(r)));
  let caps: unknown = plain;
  const reenter = (): unknown => t.checkExtensions([1, 2, 3, lib.Cap.GUEST_MEMFD, lib.Cap.NR_MEMSLOTS]);
  if (c.hz.proxies || c.hz.getters || c.hz.reentrant) {
    caps = r.weighted<() => unknown>([
      [10, () => plain],
      [4, () => c.hostileArray(plain, t, reenter)],
      [1, () => r.pick<unknown>([null, 'GUEST_MEMFD', 42, { length: 3 }, { length: 2 ** 32 }, new Int32Array([1, 2]), Array(5)])],
    ])();
  }
  if (t instanceof lib.Vm) c.touched.add(t);
  return call('checkExtensions', `${c.st.name(t)}.checkExtensions(${show(caps)})`, () => {
    const out = t.checkExtensions(caps as number[]);
    // Oracle: each answer must be what the single form answers (a
    // re-entrant call must not clobber a shared request buffer).
    if (caps === plain && Array.isArray(out) && !t.closed) {
      for (let i = 0; i < Math.min(plain.length, 40); i++) {
        const cap = plain[i];
        if (typeof cap !== 'number') continue;
        const one = t.checkExtension(cap);
        if (out[i] !== one) c.wrong.push(`checkExtensions answer [${i}] for cap ${cap} was ${String(out[i])}, checkExtension says ${one}`);
      }
    } else if (Array.isArray(out) && !t.closed && described.has(caps as object)) {
      const want = plain.map((cap) => (typeof cap === 'number' ? t.checkExtension(cap) : undefined));
      out.forEach((v, i) => {
        if (i < plain.length && want[i] !== undefined && v !== want[i])
          c.wrong.push(`checkExtensions(${show(caps)}) answer [${i}] for cap ${String(plain[i])} was ${v}, checkExtension says ${want[i]}`);
      });
    }
  });
}

function kvmQuery(c: Ctx): Call | null {
  const k = anyOf(c, c.st.kvms);
  if (k === null) return null;
  const what = c.rng.pick(['capabilities', 'vcpuMmapSize', 'supportedCpuid', 'fd', 'taskSizeMax', 'apiVersion', 'path', 'closed']);
  return call(`kvm.${what}`, `${c.st.name(k)}.${what}${/^[a-z]+[A-Z]/.test(what) || what === 'capabilities' ? '()' : ''}`, () => {
    const v = (k as unknown as Record<string, unknown>)[what];
    return typeof v === 'function' ? (v as () => unknown).call(k) : v;
  });
}

function createVm(c: Ctx): Call | null {
  if (c.st.live(c.st.vms).length >= 5) return null;
  const k = anyOf(c, c.st.kvms);
  if (k === null) return null;
  const r = c.rng;
  const type = r.weighted<unknown>([
    [14, 'default'],
    [1, 'sw-protected'],
    [1, 'sev'],
    [1, 'sev-es'],
    [1, 'snp'],
    [1, 'tdx'],
    [1, 'nope'],
    [1, 7],
    [1, null],
    [1, '__proto__'],
    [1, 'toString'],
    [1, {}],
  ]);
  const form = r.weighted<string>([
    [10, 'opts'],
    [3, 'none'],
    [1, 'null'],
    [1, 'string'],
  ]);
  let opts: unknown = form === 'opts' ? { type } : form === 'null' ? null : form === 'string' ? 'default' : undefined;
  let note = '';
  if (form === 'opts') ({ value: opts, note } = c.hostile(opts as object, k, () => c.add('vm', k.createVm())));
  return call('kvm.createVm', `${c.st.name(k)}.createVm(${form === 'none' ? '' : show(opts)})${note}`, () => {
    c.add('vm', form === 'none' ? k.createVm() : k.createVm(opts as lib.CreateVmOptions));
  });
}

// ---- Vm -------------------------------------------------------------------------------------------

function createGuestMemfd(c: Ctx): Call | null {
  const vm = anyOf(c, c.st.vms);
  if (vm === null) return null;
  if (c.st.live(c.st.gmems).filter((g) => c.st.parent.get(g) === vm).length >= 6) return null;
  c.touched.add(vm);
  const size = gmemSize(c.rng);
  const flags = c.rng.chance(0.9) ? gmemFlags(c, vm) : undefined;
  const base: Record<string, unknown> = flags === undefined ? { size } : { size, flags };
  const desc = `${c.st.name(vm)}.createGuestMemfd(${show(base, c.st)})`;
  const { value, note } = c.hostile(base, vm, () => c.add('gmem', vm.createGuestMemfd({ size: PAGE }), vm));
  return call('vm.createGuestMemfd', desc + note, () => {
    c.add('gmem', vm.createGuestMemfd(value as unknown as lib.GuestMemfdOptions), vm);
  });
}

function slotsOf(c: Ctx, vm: Vm): Memslot[] {
  return c.st.slots.filter((s) => c.st.parent.get(s) === vm);
}

function backingValue(c: Ctx, gmem: unknown): unknown {
  const r = c.rng;
  return r.weighted<() => unknown>([
    [50, () => undefined],
    [8, () => ({ kind: 'anonymous' })],
    [8, () => ({ kind: 'none' })],
    [gmem ? 15 : 2, () => ({ kind: 'guest-memfd' })],
    [
      12,
      () => {
        const f = r.pick(c.st.files);
        return r.chance(0.5)
          ? { kind: 'fd', fd: f.fd }
          : { kind: 'fd', fd: f.fd, offset: r.pick<unknown>([0, PAGE, 2 * PAGE, f.size, f.size + PAGE, 100, -1, 2 ** 40, 1n]) };
      },
    ],
    [2, () => ({ kind: 'fd', fd: r.pick<unknown>([-1, 99999, 2 ** 31, 1.5, 'x']) })],
    [2, () => r.pick<unknown>([{ kind: 'bogus' }, {}, null, 'anonymous', { kind: 'none', extra: 1 }])],
  ])();
}

function addMemslot(c: Ctx): Call | null {
  const vm = anyOf(c, c.st.vms);
  if (vm === null) return null;
  const mine = slotsOf(c, vm);
  if (c.st.live(mine).length >= 20) return null;
  c.touched.add(vm);
  const r = c.rng;
  const bigs = c.st.live(mine).filter((s) => s.size > BIG).length;
  const opts: Record<string, unknown> = {};
  const slot = r.weighted<unknown>([
    [60, undefined],
    [12, r.int(8)],
    [6, mine.length > 0 ? r.pick(mine).slot : 0],
    [2, 32763],
    [2, 32764],
    [1, 65535],
    [1, 2 ** 32 - 1],
    [1, -1],
    [1, 1.5],
    [1, '3'],
  ]);
  if (slot !== undefined) opts.slot = slot;
  const as = r.weighted<unknown>([
    [85, undefined],
    [6, 0],
    [3, 1],
    [1, 2],
    [1, 65536],
    [1, -1],
    [1, 1.5],
  ]);
  if (as !== undefined) opts.addressSpace = as;
  opts.gpa = gpaValue(r, mine);
  opts.size = slotSize(r, bigs < 2);
  for (const key of ['readonly', 'logDirtyPages']) {
    const v = r.weighted<unknown>([
      [85, undefined],
      [6, true],
      [4, false],
      [1, 1],
      [1, 'yes'],
    ]);
    if (v !== undefined) opts[key] = v;
  }
  const own = c.st.gmems.filter((g) => c.st.parent.get(g) === vm);
  const other = c.st.gmems.filter((g) => c.st.parent.get(g) !== vm);
  // The real file behind the option (its size for the offset), read here and
  // not through the Proxy below, whose reads belong to the call.
  let file: GuestMemfd | null = null;
  const gmem = r.weighted<() => unknown>([
    [50, () => undefined],
    [own.length > 0 ? 35 : 0, () => (file = anyOf(c, own, 0.9))],
    [other.length > 0 ? 8 : 0, () => (file = r.pick(other))],
    [2, () => ({ fd: 3 })],
    [1, () => r.pick<unknown>([null, 42, {}])],
    // A Proxy of a real GuestMemfd: it must not pass for one (its reads could close things).
    [
      own.length > 0 && c.hz.proxies ? 2 : 0,
      () => {
        file = r.pick(own);
        return proxied(file, c.action(vm) ?? { desc: 'does nothing', run: () => {} }, r.range(1, 3));
      },
    ],
  ])();
  if (gmem !== undefined) opts.guestMemfd = gmem;
  if (gmem !== undefined && r.chance(0.5)) {
    const size = (file as GuestMemfd | null)?.size ?? 0;
    opts.guestMemfdOffset = r.weighted<() => unknown>([
      [10, () => r.int(Math.max(1, Math.min(size, 64 * PAGE) / PAGE)) * PAGE],
      [3, () => size],
      [2, () => 100],
      [2, () => u64Edge(r)],
      [1, () => badValue(r)],
    ])();
  }
  let backing = backingValue(c, gmem);
  let backingNote = '';
  if (backing !== null && typeof backing === 'object') {
    // The nested option object can be hostile too.
    const h = c.hostile(backing as Record<string, unknown>, vm, undefined, 0.1);
    backing = h.value;
    if (h.note !== '') backingNote = ` [backing:${h.note.slice(1, -1)}]`;
  }
  if (backing !== undefined) opts.backing = backing;
  if (typeof opts.slot === 'number' && Number.isInteger(opts.slot) && opts.slot >= 0 && opts.slot < 65536) c.st.usedIds.add(opts.slot);
  const desc = `${c.st.name(vm)}.addMemslot(${show(opts, c.st)})`;
  let note = '';
  let value: Record<string, unknown> = opts;
  if (r.chance(0.05) && file !== null && gmem === file && c.hz.getters) {
    const g: GuestMemfd = file;
    // The accessor closes another argument: the guest_memfd the slot binds.
    withGetter(opts, r.pick(['gpa', 'size', 'backing']), { desc: `closes ${c.st.name(g)}`, run: () => g.close() });
    note = ` [getter closes ${c.st.name(g)}]`;
  } else {
    ({ value, note } = c.hostile(opts, vm, () => {
      const s = vm.addMemslot({ gpa: freeGpa(vm), size: PAGE });
      c.st.usedIds.add(s.slot);
      return c.add('slot', s, vm);
    }));
  }
  return call('vm.addMemslot', desc + backingNote + note, () => {
    const s = vm.addMemslot(value as unknown as lib.MemslotOptions);
    c.st.usedIds.add(s.slot);
    c.add('slot', s, vm);
  });
}

function vmQuery(c: Ctx): Call | null {
  const vm = anyOf(c, c.st.vms);
  if (vm === null) return null;
  const r = c.rng;
  const g = gpaValue(r, slotsOf(c, vm));
  const what = r.pick([
    'memslots',
    'memslotAt',
    'memslotAt-as',
    'memslotsIn',
    'guestMemfds',
    'attributes',
    'isPrivate',
    'privateRanges',
    'attributeRanges',
    'capabilities',
    'supportedCpuid',
    'fd',
    'type',
    'id',
  ]);
  const a = r.int(1024);
  const b = r.pick<unknown>([a + 16, a, 0, 2 ** 40, 2 ** 53, NaN, -1, 1.5]);
  const as = r.pick<unknown>([0, 1, -1, 'x']);
  const desc = {
    memslots: 'memslots()',
    memslotAt: `memslotAt(${show(g)})`,
    'memslotAt-as': `memslotAt(${show(g)}, ${show(as)})`,
    memslotsIn: `memslotsIn(${a}, ${show(b)})`,
    guestMemfds: 'guestMemfds()',
    attributes: `attributes(${show(g)})`,
    isPrivate: `isPrivate(${show(g)})`,
    privateRanges: 'privateRanges()',
    attributeRanges: 'attributeRanges()',
    capabilities: 'capabilities()',
    supportedCpuid: 'supportedCpuid()',
    fd: 'fd',
    type: 'type',
    id: 'id',
  }[what];
  return call(`vm.${what}`, `${c.st.name(vm)}.${desc}`, () => {
    switch (what) {
      case 'memslots':
        return vm.memslots();
      case 'memslotAt':
        return vm.memslotAt(g as number);
      case 'memslotAt-as':
        return vm.memslotAt(g as number, as as number);
      case 'memslotsIn':
        return vm.memslotsIn(a, b as number);
      case 'guestMemfds':
        return vm.guestMemfds();
      case 'attributes':
        return vm.attributes(g as number);
      case 'isPrivate':
        return vm.isPrivate(g as number);
      case 'privateRanges':
        return vm.privateRanges();
      case 'attributeRanges':
        return vm.attributeRanges();
      case 'capabilities':
        return vm.capabilities();
      case 'supportedCpuid':
        return vm.supportedCpuid();
      case 'fd':
        return vm.fd;
      case 'type':
        return vm.type;
      default:
        return vm.id;
    }
  });
}

function setMemoryAttributes(c: Ctx): Call | null {
  const vm = anyOf(c, c.st.vms);
  if (vm === null) return null;
  c.touched.add(vm);
  const r = c.rng;
  const range = { gpa: gpaValue(r, slotsOf(c, vm)), size: r.chance(0.8) ? pages(r, 16) : slotSize(r, false) };
  const convert = r.chance(0.5);
  const attrs = r.pick<unknown>([lib.MemoryAttribute.PRIVATE, 0, 1, 2 ** 32, -1, 'x', 8n]);
  const to = r.pick<unknown>(['private', 'shared', 'shared', 'private', 'bogus', undefined]);
  let options = r.pick<unknown>([undefined, {}, { discard: true }, { discard: false }, null]);
  if (options !== null && typeof options === 'object' && Object.keys(options).length > 0) options = c.hostile(options as object, vm, undefined, 0.1).value;
  const shown = show(range, c.st);
  const { value, note } = c.hostile(range, vm, () => vm.setMemoryAttributes({ gpa: 0, size: PAGE }, 0));
  if (convert) {
    return call('vm.convert', `${c.st.name(vm)}.convert(${shown}, ${show(to)}${options === undefined ? '' : `, ${show(options)}`})${note}`, () =>
      vm.convert(value as lib.GpaRange, to as 'private', options as lib.ConversionOptions),
    );
  }
  return call('vm.setMemoryAttributes', `${c.st.name(vm)}.setMemoryAttributes(${shown}, ${show(attrs)})${note}`, () =>
    vm.setMemoryAttributes(value as lib.GpaRange, attrs as number),
  );
}

function enableCap(c: Ctx): Call | null {
  const vm = anyOf(c, c.st.vms);
  if (vm === null) return null;
  const r = c.rng;
  const cap = r.pick<unknown>(['EXIT_HYPERCALL', 'EXIT_HYPERCALL', lib.Cap.EXIT_HYPERCALL, 'NOPE', 999999, 2 ** 31, -1]);
  const plain = r.pick<unknown[]>([[], [0], [1n << 12n], [4096], [1, 2, 3, 4], [1, 2, 3, 4, 5], [-1], [2 ** 64], ['x'], [1n << 64n]]);
  const args = r.chance(0.2) && (c.hz.proxies || c.hz.getters) ? c.hostileArray([...plain], vm, () => vm.enableCap('EXIT_HYPERCALL', [0])) : plain;
  const flags = r.pick<unknown>([undefined, 0, 0, 1, -1, 1.5]);
  return call('vm.enableCap', `${c.st.name(vm)}.enableCap(${show(cap)}, ${show(args)}${flags === undefined ? '' : `, ${show(flags)}`})`, () =>
    vm.enableCap(cap as 'EXIT_HYPERCALL', args as number[], flags as number),
  );
}

function createVcpu(c: Ctx): Call | null {
  const vm = anyOf(c, c.st.vms);
  if (vm === null) return null;
  const made = c.st.vcpusMade.get(vm) ?? 0;
  if (made >= 6 && !vm.closed) return null;
  c.st.vcpusMade.set(vm, made + 1);
  const id = c.rng.weighted<unknown>([
    [10, undefined],
    [6, c.rng.int(4)],
    [1, 255],
    [1, 1023],
    [1, 4095],
    [1, 4096],
    [1, 2 ** 31],
    [1, 2 ** 32 - 1],
    [1, 2 ** 32],
    [1, -1],
    [1, 1.5],
    [1, '1'],
  ]);
  return call('vm.createVcpu', `${c.st.name(vm)}.createVcpu(${id === undefined ? '' : show(id)})`, () => {
    c.add('vcpu', id === undefined ? vm.createVcpu() : vm.createVcpu(id as number), vm);
  });
}

// ---- GuestMemfd -----------------------------------------------------------------------------------

function gmemOp(c: Ctx): Call | null {
  const g = anyOf(c, c.st.gmems);
  if (g === null) return null;
  vmOf(c, g);
  const r = c.rng;
  const what = r.weighted<string>([
    [8, 'allocate'],
    [6, 'punchHole'],
    [4, 'map'],
    [2, 'stat'],
    [2, 'boundRanges'],
    [2, 'props'],
  ]);
  const name = c.st.name(g);
  switch (what) {
    case 'allocate': {
      const off = fileOffset(r, g.size);
      const len = clampAlloc(g.size, off, fileLength(r));
      return call('gmem.allocate', `${name}.allocate(${show(off)}, ${show(len)})`, () => g.allocate(off as number, len as number));
    }
    case 'punchHole': {
      const off = fileOffset(r, g.size);
      const len = fileLength(r);
      return call('gmem.punchHole', `${name}.punchHole(${show(off)}, ${show(len)})`, () => g.punchHole(off as number, len as number));
    }
    case 'map':
      return call('gmem.map', `${name}.map() and touch its first and last byte`, () => {
        const m = g.map();
        touch(m.bytes(0, Math.min(m.length, PAGE)), c.st);
        if (m.length > PAGE) touch(m.bytes(m.length - PAGE, PAGE), c.st);
      });
    case 'stat':
      return call('gmem.stat', `${name}.stat()`, () => g.stat());
    case 'boundRanges':
      return call('gmem.boundRanges', `${name}.boundRanges()`, () => g.boundRanges());
    default:
      return call('gmem.props', `${name}.{size, flags, flagBits, label, vmId, fd}`, () => [g.size, g.flags, g.flagBits, g.label, g.vmId, g.fd]);
  }
}

// ---- Memslot --------------------------------------------------------------------------------------

function memslotOp(c: Ctx): Call | null {
  const s = anyOf(c, c.st.slots);
  if (s === null) return null;
  const vm = vmOf(c, s);
  const r = c.rng;
  const what = r.weighted<string>([
    [10, 'view'],
    [4, 'delete'],
    [4, 'move'],
    [3, 'setDirtyLogging'],
    [2, 'contains'],
    [2, 'props'],
  ]);
  const name = c.st.name(s);
  switch (what) {
    case 'view': {
      const gpa = s.deleted ? 0 : s.gpa;
      const size = s.deleted ? PAGE : s.size;
      const [a, b] = r.weighted<() => [unknown, unknown]>([
        [20, () => [undefined, undefined]],
        [12, () => [gpa + r.int(Math.min(size, 64 * PAGE) / PAGE) * PAGE, r.pick([1, PAGE, 2 * PAGE])]],
        [6, () => [gpa + r.int(size / PAGE) * PAGE, PAGE]],
        [4, () => [gpa + size - PAGE, PAGE]],
        [4, () => [gpa, r.pick<unknown>([G4, G4 + PAGE, size, size + 1, 2 ** 53])]],
        [3, () => [r.pick<unknown>([gpa - PAGE, gpa + size, -1, NaN, 1.5, BigInt(gpa)]), PAGE]],
        [2, () => [gpa, r.pick<unknown>([-1, NaN, 'x', 0])]],
      ])();
      const args = a === undefined ? '' : b === undefined ? show(a) : `${show(a)}, ${show(b)}`;
      return call('memslot.view', `${name}.view(${args}) and touch its first and last byte`, () => {
        const v = a === undefined ? s.view() : s.view(a as number, b as number);
        touch(v, c.st);
      });
    }
    case 'delete':
      return call('memslot.delete', `${name}.delete()`, () => s.delete());
    case 'move': {
      const g = gpaValue(r, vm ? slotsOf(c, vm) : []);
      return call('memslot.move', `${name}.move(${show(g)})`, () => s.move(g as number));
    }
    case 'setDirtyLogging': {
      const on = r.pick<unknown>([true, false, true, 1, 0, 'x', undefined]);
      return call('memslot.setDirtyLogging', `${name}.setDirtyLogging(${show(on)})`, () => s.setDirtyLogging(on as boolean));
    }
    case 'contains': {
      const g = gpaValue(r, [s]);
      return call('memslot.contains', `${name}.contains(${show(g)})`, () => s.contains(g as number));
    }
    default:
      return call('memslot.props', `${name}.{slot, gpa, size, flags, userspaceAddr, backing, guestMemfdOffset}`, () => [
        s.slot,
        s.addressSpace,
        s.gpa,
        s.size,
        s.flags,
        s.userspaceAddr,
        s.backing,
        s.guestMemfdOffset,
        s.readonly,
        s.dirtyLogging,
        s.deleted,
      ]);
  }
}

// ---- Mapping --------------------------------------------------------------------------------------

function mappingCreate(c: Ctx): Call | null {
  const st = c.st;
  if (st.live(st.maps).length >= 12) return null;
  const r = c.rng;
  const bigs = st.live(st.maps).filter((m) => m.length > BIG).length;
  // Under RLIMIT_AS, often a few hundred MiB: a dozen of them use up the
  // address space, so what follows (a vCPU's thread, a worker, the next
  // mapping) meets the limit.
  const len = c.env.addressSpaceLimited && r.chance(0.5) ? r.pick([128, 256, 512, 768]) * MIB : mappingLength(r, bigs < 4);
  if (r.chance(0.15)) {
    // The unchecked form: any prot and flags, files shorter than the
    // mapping, guest_memfds without init-shared. Its faults are probe()'s.
    const fd = r.weighted<unknown>([
      [4, undefined],
      [4, r.pick(st.files).fd],
      [st.live(st.gmems).length > 0 ? 3 : 0, st.live(st.gmems).length > 0 ? r.pick(st.live(st.gmems)).fd : undefined],
      [1, r.pick<unknown>([-2, 99999, 1.5, 'x', null])],
    ]);
    const prot = r.pick<unknown>([undefined, 0, 1, 3, 7, -1, 2 ** 32, 'rw']);
    const flags = r.pick<unknown>([undefined, 0x01, 0x02, 0x21, 0x22, 0x11, 0x4001, 0x40022, 0, -1]);
    const offset = r.pick<unknown>([undefined, 0, PAGE, 100, -1, 1n << 63n]);
    const len3 = r.chance(0.7) ? pages(r, 16) : len;
    const o = { length: len3, fd, prot, flags, offset } as unknown as Parameters<typeof Mapping.unchecked>[0];
    return call('Mapping.unchecked', `Mapping.unchecked(${show(o)}) and probe its first and last byte`, () => {
      const m = c.add('map', Mapping.unchecked(o));
      m.probe(0, 1, 'read');
      m.probe(m.length - 1, 1, 'write', 0x5a);
    });
  }
  if (r.chance(0.08)) {
    const rlen = r.pick<unknown>([PAGE, 16 * PAGE, 4 * MIB, 0, -1, 1.5, 2n ** 53n]);
    return call('Mapping.reserve', `Mapping.reserve(${show(rlen)}) and probe its first byte`, () => {
      c.add('map', Mapping.reserve(rlen as number)).probe(0, 1, 'read');
    });
  }
  if (r.chance(0.6)) {
    return call('Mapping.anonymousShared', `Mapping.anonymousShared(${show(len)}) and touch its first and last byte`, () => {
      const m = c.add('map', Mapping.anonymousShared(len as number));
      touch(m.bytes(0, Math.min(m.length, PAGE)), c.st);
      if (m.length > PAGE) touch(m.bytes(m.length - PAGE, PAGE), c.st);
    });
  }
  // A harness file (possibly shorter than the mapping), a vCPU's kvm_run, a
  // mappable guest_memfd, or a bad fd.
  const mappable = st.live(st.gmems).filter((g) => (g.flagBits & 3) === 3);
  const src = r.weighted<() => { fd: unknown; what: string; max?: number }>([
    [
      10,
      () => {
        const f = r.pick(st.files);
        return { fd: f.fd, what: `a ${f.size}-byte file` };
      },
    ],
    // A vCPU fd only within its kvm_run area: past it the kernel raises SIGBUS by design (see the header).
    [
      st.live(st.vcpus).length > 0 ? 2 : 0,
      () => {
        const v = r.pick(st.live(st.vcpus));
        return { fd: v.fd, what: `${st.name(v)}'s fd`, max: v.runPage.byteLength };
      },
    ],
    [
      mappable.length > 0 ? 3 : 0,
      () => {
        const g = r.pick(mappable);
        return { fd: g.fd, what: `${st.name(g)}'s fd` };
      },
    ],
    [2, () => ({ fd: r.pick<unknown>([-1, 99999, 1.5, 'x']), what: 'a bad fd' })],
  ])();
  const off = src.max !== undefined ? undefined : r.pick<unknown>([undefined, 0, 0, PAGE, 2 * PAGE, 0x100000, 100, -1, 2 ** 40, 1n << 63n]);
  let len2 = r.chance(0.6) ? pages(r, 8) : len;
  if (src.max !== undefined) len2 = Math.min(src.max, r.pick([PAGE, src.max]));
  return call(
    'Mapping.sharedFile',
    `Mapping.sharedFile(${show(src.fd)} (${src.what}), ${show(len2)}${off === undefined ? '' : `, ${show(off)}`}) and touch its first and last byte`,
    () => {
      const m = c.add(
        'map',
        off === undefined ? Mapping.sharedFile(src.fd as number, len2 as number) : Mapping.sharedFile(src.fd as number, len2 as number, off as number),
      );
      touch(m.bytes(0, Math.min(m.length, PAGE)), c.st);
      if (m.length > PAGE) touch(m.bytes(m.length - PAGE, PAGE), c.st);
    },
  );
}

function mappingOp(c: Ctx): Call | null {
  const m = anyOf(c, c.st.maps);
  if (m === null) return null;
  const r = c.rng;
  const what = r.weighted<string>([
    [8, 'bytes'],
    [4, 'dataView'],
    [4, 'discard'],
    [3, 'unmap'],
    [1, 'props'],
    [5, 'probe'],
    [2, 'advise'],
    [2, 'mbind'],
    [1, 'movePages'],
    [3, 'mapFixed'],
  ]);
  const name = c.st.name(m);
  const [o, l] = r.weighted<() => [unknown, unknown]>([
    [10, () => [undefined, undefined]],
    [10, () => [r.int(Math.max(1, Math.min(m.length, 64 * PAGE) / PAGE)) * PAGE, r.pick([1, 100, PAGE])]],
    // Anywhere in a large mapping (views of one over 4 GiB come from windows made on demand).
    [6, () => [r.int(Math.max(1, m.length / PAGE)) * PAGE, r.pick([1, PAGE, 2 * MIB])]],
    [2, () => [Math.max(0, r.int(Math.max(1, m.length / (2 * G4))) * 2 * G4 - PAGE), 2 * PAGE]],
    [4, () => [Math.max(0, m.length - PAGE), PAGE]],
    [4, () => [0, r.pick<unknown>([G4, G4 + PAGE, m.length + 1, 2 ** 53])]],
    [3, () => [r.pick<unknown>([-1, m.length, NaN, 1.5, 2 ** 53, 4096n]), PAGE]],
  ])();
  const args = o === undefined ? '' : `${show(o)}, ${show(l)}`;
  switch (what) {
    case 'bytes':
      return call('mapping.bytes', `${name}.bytes(${args}) and touch it`, () => touch(o === undefined ? m.bytes() : m.bytes(o as number, l as number), c.st));
    case 'dataView':
      return call('mapping.dataView', `${name}.dataView(${args}) and touch it`, () =>
        touch(o === undefined ? m.dataView() : m.dataView(o as number, l as number), c.st),
      );
    case 'discard':
      return call('mapping.discard', `${name}.discard(${show(o ?? 0)}, ${show(l ?? m.length)})`, () =>
        m.discard((o ?? 0) as number, (l ?? m.length) as number),
      );
    case 'unmap':
      return call('mapping.unmap', `${name}.unmap()`, () => m.unmap());
    case 'probe': {
      const access = r.weighted<unknown>([
        [5, 'read'],
        [5, 'write'],
        [1, r.pick<unknown>(['exec', 1, undefined, null])],
      ]);
      const byte = r.pick<unknown>([0, 0xaa, 255, 256, -1, 1.5, '1']);
      const len = l === undefined ? undefined : r.chance(0.8) ? Math.min(Number(l) || 1, 2 * MIB) : l;
      return call('mapping.probe', `${name}.probe(${show(o ?? 0)}, ${show(len)}, ${show(access)}, ${show(byte)})`, () =>
        m.probe((o ?? 0) as number, len as number, access as 'read', byte as number),
      );
    }
    case 'mbind': {
      const mode = r.pick<unknown>([0, 1, 2, 3, 4, 999, -1]);
      const nodes = r.pick<unknown>([[], [0], [0, 1], [1023], [1024], 'x', [1.5]]);
      const flags = r.pick<unknown>([undefined, 0, 1, 2, 4, 8, -1]);
      return call(
        'mapping.mbind',
        `${name}.mbind(${show(o ?? 0)}, ${show(l ?? m.length)}, ${show(mode)}, ${show(nodes)}, ${show(flags)}) and get_mempolicy`,
        () => {
          m.mbind((o ?? 0) as number, (l ?? m.length) as number, mode as number, nodes as number[], flags as number);
          m.getMempolicy((o ?? 0) as number);
        },
      );
    }
    case 'movePages': {
      const n = r.pick<unknown>([1, 2, 16, 0, 65537, -1, 1.5]);
      return call('mapping.movePages', `${name}.movePages(${show(o ?? 0)}, ${show(n)})`, () => m.movePages((o ?? 0) as number, n as number));
    }
    case 'advise': {
      const advice = r.pick<unknown>([0, 3, 4, 9, 14, 15, 20, 21, 22, 23, 25, 100, 101, 999, -1, 'x']);
      // MADV_POPULATE_READ/WRITE and MADV_COLLAPSE do work in proportion to
      // the range: populating the 4 GiB + 4 KiB shared mapping allocates
      // 4 GiB of shmem, 4.5 s on an idle host and past the 10 s hang bound
      // under ASan beside another child. Bounded work, not a hang: those
      // advices get at most 64 MiB (as probe() mostly gets 2 MiB).
      const whole = l ?? m.length;
      const filling = advice === 22 || advice === 23 || advice === 25;
      const len = filling && typeof whole === 'number' && whole > 64 * MIB ? 64 * MIB : whole;
      return call('mapping.advise', `${name}.advise(${show(o ?? 0)}, ${show(len)}, ${show(advice)})`, () =>
        m.advise((o ?? 0) as number, len as number, advice as number),
      );
    }
    case 'mapFixed': {
      // Anywhere in or past the reservation (or any mapping, which refuses),
      // over a live child or not, with any fd, prot and flags.
      const at = r.pick<unknown>([0, PAGE, 2 * PAGE, 100, m.length, m.length - PAGE, -PAGE, 2 ** 53, 1n << 63n, 'x']);
      const length = r.pick<unknown>([PAGE, 2 * PAGE, m.length, m.length + PAGE, 0, 1, -1]);
      const fd = r.pick<unknown>([undefined, -1, r.pick(c.st.files).fd, 99999, -2, 1.5]);
      const prot = r.pick<unknown>([undefined, 0, 1, 3, 7, -1]);
      const flags = r.pick<unknown>([undefined, 0x01, 0x02, 0x21, 0x22, 0x10, 0x100000, 0x40022, -1]);
      const offset = r.pick<unknown>([undefined, 0, PAGE, 100, -1, 1n << 63n]);
      const o = { at, length, fd, prot, flags, offset } as unknown as Parameters<Mapping['mapFixed']>[0];
      return call('mapping.mapFixed', `${name}.mapFixed(${show(o)}) and probe its first and last byte`, () => {
        const f = c.add('map', m.mapFixed(o));
        f.probe(0, 1, 'read');
        f.probe(f.length - 1, 1, 'write', 0x5a);
      });
    }
    default:
      return call('mapping.props', `${name}.{address, length, unmapped}`, () => [m.address, m.length, m.unmapped]);
  }
}

// ---- Vcpu -----------------------------------------------------------------------------------------

const REG_NAMES = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'] as const;

function baseRegs(c: Ctx, v: Vcpu): Regs {
  const last = c.st.lastRegs.get(v);
  if (last !== undefined) return { ...last };
  const r = {} as Regs;
  for (const n of REG_NAMES) r[n] = 0n;
  r.rip = 0xfff0n;
  r.rflags = 2n;
  return r;
}

function hostileReg(r: Rng): unknown {
  return r.pick<unknown>([(1n << 64n) + 5n, -1n, 5, 'abc', '0x10', undefined, null, true, {}, Symbol('r'), 1.5, 2n ** 63n, [1n]]);
}

function regsValue(c: Ctx, v: Vcpu): { regs: Regs; desc: string } {
  const r = c.rng;
  const regs = baseRegs(c, v);
  const changed: string[] = [];
  for (let i = r.int(3); i > 0; i--) {
    const n = r.pick(REG_NAMES);
    const val = r.chance(0.6) ? r.u64() : hostileReg(r);
    (regs as Record<string, unknown>)[n] = val;
    changed.push(`${n}: ${show(val)}`);
  }
  if (r.chance(0.05)) {
    delete (regs as Partial<Regs>).rip;
    changed.push('rip missing');
  }
  return { regs, desc: changed.length === 0 ? '{...current}' : `{...current, ${changed.join(', ')}}` };
}

function sregsValue(c: Ctx, v: Vcpu): { sregs: Sregs | null; desc: string } {
  const r = c.rng;
  const last = c.st.lastSregs.get(v);
  if (last === undefined) return { sregs: null, desc: '' };
  const s = structuredClone(last);
  const changed: string[] = [];
  for (let i = r.int(3); i > 0; i--) {
    const what = r.pick(['seg', 'cr', 'dt', 'bitmap']);
    if (what === 'seg') {
      const seg = r.pick(['cs', 'ds', 'ss', 'tr', 'ldt'] as const);
      const field = r.pick(['base', 'limit', 'selector', 'type', 'present', 'l', 'db', 'g', 'unusable'] as const);
      const val =
        field === 'base' ? r.pick<unknown>([r.u64(), 5, 'x', -1n, 1n << 64n]) : r.pick<unknown>([r.u32(), 0, 1, 255, 256, -1, 'x', 1.5, 2n, undefined]);
      (s[seg] as unknown as Record<string, unknown>)[field] = val;
      changed.push(`${seg}.${field}: ${show(val)}`);
    } else if (what === 'cr') {
      const n = r.pick(['cr0', 'cr3', 'cr4', 'efer', 'apicBase', 'cr8'] as const);
      const val = r.chance(0.7) ? r.pick([r.u64(), 0n, 0x80050033n, 0x500n, 1n << 63n]) : hostileReg(r);
      (s as unknown as Record<string, unknown>)[n] = val;
      changed.push(`${n}: ${show(val)}`);
    } else if (what === 'dt') {
      const val = r.pick<unknown>([{ base: r.u64(), limit: r.u32() }, { base: 1, limit: 0 }, null, { base: 0n }]);
      s.gdt = val as Sregs['gdt'];
      changed.push(`gdt: ${show(val)}`);
    } else {
      const val = r.pick<unknown>([[], [0n, 0n, 0n, 0n, 0n], [1n], 'x', null, [1, 2, 3, 4]]);
      s.interruptBitmap = val as bigint[];
      changed.push(`interruptBitmap: ${show(val)}`);
    }
  }
  return { sregs: s, desc: changed.length === 0 ? '{...current}' : `{...current, ${changed.join(', ')}}` };
}

function cpuidValue(c: Ctx, v: Vcpu, vm: Vm | undefined): { entries: unknown; desc: string } {
  const r = c.rng;
  let supported: lib.CpuidEntry[] = [];
  try {
    supported = vm?.supportedCpuid() ?? [];
  } catch {
    // the vm is closed: its supportedCpuid() does not need the fd, but be safe
  }
  return r.weighted<() => { entries: unknown; desc: string }>([
    [10, () => ({ entries: supported, desc: 'vm.supportedCpuid()' })],
    [4, () => ({ entries: [], desc: '[]' })],
    [
      3,
      () => {
        const k = r.int(supported.length + 1);
        return { entries: supported.slice(0, k), desc: `supportedCpuid().slice(0, ${k})` };
      },
    ],
    [
      2,
      () => ({
        entries: Array.from({ length: r.pick([257, 1000, 5000]) }, (_, i) => ({ function: i, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0 })),
        desc: 'many entries',
      }),
    ],
    [
      4,
      () => {
        const e = supported.map((x) => ({ ...x })) as unknown as Record<string, unknown>[];
        const field = r.pick(['function', 'index', 'flags', 'eax', 'ebx', 'ecx', 'edx']);
        const val = r.pick<unknown>(['x', -1, 2 ** 32, 1.5, undefined, null, 5n, {}, Symbol('c')]);
        if (e.length > 0) (e[r.int(e.length)] as Record<string, unknown>)[field] = val;
        return { entries: e, desc: `supportedCpuid() with one ${field}: ${show(val)}` };
      },
    ],
    [2, () => ({ entries: r.pick<unknown>([null, 'x', [null], [{}], { length: 2 }, [1, 2]]), desc: 'a bad list' })],
    [
      c.hz.proxies || c.hz.getters ? 3 : 0,
      () => {
        const e = c.hostileArray(supported.length > 0 ? supported : [{ function: 0, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0 }], v, () =>
          v.setCpuid(supported),
        );
        return { entries: e, desc: show(e) };
      },
    ],
  ])();
}

function timeoutValue(r: Rng, sync: boolean): unknown {
  // Never 0 or absent: that is "no deadline" (see the header).
  return r.weighted<() => unknown>([
    [20, () => r.range(1, 60)],
    [4, () => r.range(60, 400)],
    [2, () => (sync ? r.pick<unknown>([-1, 1.5, NaN, '5', 2 ** 31, 5n, null]) : r.pick<unknown>([-1, NaN, '5', 2 ** 31, 1.5]))],
  ])();
}

function vcpuOp(c: Ctx): Call | null {
  const r = c.rng;
  const what = r.weighted<string>([
    [6, 'getRegs'],
    [6, 'setRegs'],
    [2, 'updateRegs'],
    [4, 'getSregs'],
    [4, 'setSregs'],
    [1, 'updateSregs'],
    [4, 'setCpuid'],
    [6, 'runSync'],
    [6, 'run'],
    [6, 'during-run'],
    [1, 'kick'],
    [2, 'preFaultMemory'],
    [1, 'props'],
    [1, 'runPage'],
  ]);
  // Runs mostly on a Guest's vCPU: one with code and a state that runs
  // (spinning, halting, doing I/O); a bare vCPU mostly fails at once.
  const guestVcpus = c.st
    .live(c.st.guests)
    .map((g) => g.vcpu)
    .filter((v) => !v.closed);
  const runs = what === 'run' || what === 'runSync' || what === 'during-run';
  // A call during run() meets a vCPU that is really in KVM_RUN when the guest spins.
  const spinning = guestVcpus.filter((x) => c.st.spinners.has(x));
  const v =
    what === 'during-run' && spinning.length > 0 && r.chance(0.6)
      ? r.pick(spinning)
      : runs && guestVcpus.length > 0 && r.chance(0.7)
        ? r.pick(guestVcpus)
        : anyOf(c, c.st.vcpus);
  if (v === null) return null;
  const vm = vmOf(c, v);
  const name = c.st.name(v);
  switch (what) {
    case 'getRegs':
      return call('vcpu.getRegs', `${name}.getRegs()`, () => {
        if (!v.running) c.st.lastRegs.set(v, v.getRegs());
        else v.getRegs();
      });
    case 'setRegs': {
      const { regs, desc } = regsValue(c, v);
      const { value, note } = c.hostile(regs, v, () => v.setRegs(baseRegs(c, v)));
      return call('vcpu.setRegs', `${name}.setRegs(${desc})${note}`, () => v.setRegs(value));
    }
    case 'updateRegs': {
      const mode = r.pick(['set-rip', 'close', 'throw', 'string', 'reenter']);
      return call('vcpu.updateRegs', `${name}.updateRegs(f) where f ${mode}`, () =>
        v.updateRegs((regs) => {
          if (mode === 'set-rip') regs.rip = 0x1000n;
          else if (mode === 'close') v.close();
          else if (mode === 'throw') throw new HazardSentinel('updateRegs callback');
          else if (mode === 'string') (regs as Record<string, unknown>).rax = 'zz';
          else c.secondary('updateRegs inside updateRegs', () => v.updateRegs((x) => (x.rbx = 1n)));
        }),
      );
    }
    case 'getSregs':
      return call('vcpu.getSregs', `${name}.getSregs()`, () => {
        if (!v.running) c.st.lastSregs.set(v, v.getSregs());
        else v.getSregs();
      });
    case 'setSregs': {
      const { sregs, desc } = sregsValue(c, v);
      if (sregs === null)
        return call('vcpu.getSregs', `${name}.getSregs()`, () => {
          if (!v.running) c.st.lastSregs.set(v, v.getSregs());
        });
      const { value, note } = c.hostile(sregs, v, () => v.getSregs());
      return call('vcpu.setSregs', `${name}.setSregs(${desc})${note}`, () => v.setSregs(value));
    }
    case 'updateSregs': {
      const mode = r.pick(['cr0', 'close', 'throw', 'bad-base']);
      return call('vcpu.updateSregs', `${name}.updateSregs(f) where f ${mode}`, () =>
        v.updateSregs((s) => {
          if (mode === 'cr0') s.cr0 |= 1n;
          else if (mode === 'close') v.close();
          else if (mode === 'throw') throw new HazardSentinel('updateSregs callback');
          else (s.cs as unknown as Record<string, unknown>).base = 'q';
        }),
      );
    }
    case 'setCpuid': {
      const { entries, desc } = cpuidValue(c, v, vm);
      return call('vcpu.setCpuid', `${name}.setCpuid(${desc})`, () => v.setCpuid(entries as lib.CpuidEntry[]));
    }
    case 'runSync': {
      const t = timeoutValue(r, true);
      const opts = { timeoutMs: t };
      const { value, note } = c.hostile(opts, v, () => v.runSync({ timeoutMs: 5 }), 0.1);
      return call('vcpu.runSync', `${name}.runSync(${show(opts)})${note}`, () => c.st.keep(c.st.exits, v.runSync(value as { timeoutMs: number }), 8));
    }
    case 'run': {
      const t = timeoutValue(r, false);
      const abortAt = r.chance(0.3) ? r.pick([-1, 0, 1, 5, 20]) : null;
      const opts: Record<string, unknown> = { timeoutMs: t };
      // MMIO writes the runner thread resumes: good ranges (the guests' MMIO
      // area, all of memory, one byte) and bad ones (wrong types, lengths,
      // sizes, ranges past 2^64).
      if (r.chance(0.3))
        opts.resumeMmioWrites = r.pick<unknown>([
          { gpa: 0xd0000000, size: 0x1000, length: 8 },
          { gpa: 0, size: 2n ** 64n - 1n, length: r.pick([1, 2, 4, 8]) },
          { gpa: 0xd0000000, size: 1, length: 1 },
          { gpa: 2n ** 64n - 8n, size: 16, length: 8 },
          { gpa: 0, size: 4, length: 8 },
          { gpa: -1, size: 8, length: 8 },
          { gpa: 0, size: 8, length: r.pick<unknown>([0, 3, 16, '8', undefined, 8.5]) },
          null,
          'range',
          7,
        ]);
      let ac: AbortController | null = null;
      if (abortAt !== null) {
        ac = new AbortController();
        if (abortAt < 0) ac.abort();
        opts.signal = ac.signal;
      }
      // 'at once': kick() right after run() returned its promise, while the
      // runner thread (new on a vCPU's first run) may not be in KVM_RUN yet.
      const kickAt = r.chance(0.25) ? r.pick<number | 'at once'>(['at once', 'at once', 0, 1, 10]) : null;
      const { value, note } = c.hostile(opts, v, () => v.run({ timeoutMs: 5 }), 0.1);
      const extra = `${abortAt === null ? '' : abortAt < 0 ? ' (signal already aborted)' : ` (abort after ${abortAt} ms)`}${kickAt === null ? '' : kickAt === 'at once' ? ' (kick at once)' : ` (kick after ${kickAt} ms)`}`;
      const shown = opts.resumeMmioWrites === undefined ? { timeoutMs: t } : { timeoutMs: t, resumeMmioWrites: opts.resumeMmioWrites };
      return call('vcpu.run', `await ${name}.run(${show(shown)})${extra}${note}`, async () => {
        const p = v.run(value as lib.RunOptions);
        if (ac !== null && abortAt !== null && abortAt >= 0) c.later(abortAt, 'AbortController.abort()', () => ac.abort());
        if (kickAt === 'at once') c.secondary('kick()', () => v.kick());
        else if (kickAt !== null) c.later(kickAt, 'kick()', () => v.kick());
        const exit = await p;
        c.st.keep(c.st.exits, exit, 8);
        return exit;
      });
    }
    case 'during-run': {
      // A call made while run() is in flight: a vCPU ioctl there must not
      // wait for the guest (busy error with a code), run()/runSync() must
      // refuse, close() must end the run.
      const t = r.range(30, 300);
      const during = r.weighted<string>([
        [3, 'getRegs'],
        [3, 'setRegs'],
        [2, 'getSregs'],
        [2, 'setSregs'],
        [2, 'setCpuid'],
        [2, 'updateRegs'],
        [1, 'preFaultMemory'],
        [2, 'runSync'],
        [2, 'run'],
        [1, 'kick'],
        [1, 'close'],
        [1, 'vm.close'],
        [1, 'runPage'],
      ]);
      const regs = baseRegs(c, v);
      const sregs = c.st.lastSregs.get(v);
      // At once (the runner thread may not be in KVM_RUN yet) or a few ms
      // later (it is, unless the guest exited already).
      const wait = r.pick([0, 0, 1, 3, 10]);
      return call('vcpu.during-run', `${name}.run({timeoutMs: ${t}}) and, ${wait} ms later while it is in flight, ${during}()`, async () => {
        const p = v.run({ timeoutMs: t });
        p.catch(() => {});
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        c.secondary(`${during} during run()`, () => {
          switch (during) {
            case 'getRegs':
              return v.getRegs();
            case 'setRegs':
              return v.setRegs(regs);
            case 'getSregs':
              return v.getSregs();
            case 'setSregs':
              return sregs ? v.setSregs(sregs) : v.getSregs();
            case 'setCpuid':
              return v.setCpuid(vm?.supportedCpuid() ?? []);
            case 'runSync':
              return v.runSync({ timeoutMs: 5 });
            case 'run':
              return v.run({ timeoutMs: 5 });
            case 'kick':
              return v.kick();
            case 'close':
              return v.close();
            case 'vm.close':
              return vm?.close();
            case 'preFaultMemory':
              return v.preFaultMemory({ gpa: 0, size: PAGE });
            case 'updateRegs':
              return v.updateRegs((x) => (x.rax = 1n));
            default:
              return v.runPage.getUint32(0, true);
          }
        });
        return await p;
      });
    }
    case 'kick':
      return call('vcpu.kick', `${name}.kick()`, () => v.kick());
    case 'preFaultMemory': {
      const range = { gpa: gpaValue(r, []), size: r.chance(0.7) ? pages(r, 4) : slotSize(r, false) };
      const shown = show(range);
      const { value, note } = c.hostile(range, v, () => v.preFaultMemory({ gpa: 0, size: PAGE }));
      return call('vcpu.preFaultMemory', `${name}.preFaultMemory(${shown})${note}`, () => v.preFaultMemory(value as { gpa: number; size: number }));
    }
    case 'runPage':
      return call('vcpu.runPage', `${name}.runPage.getUint32(0)`, () => v.runPage.getUint32(0, true));
    default:
      return call('vcpu.props', `${name}.{id, running, closed, fd}`, () => [v.id, v.running, v.closed, v.fd]);
  }
}

// ---- Guest ----------------------------------------------------------------------------------------

type Program = 'done' | 'spin' | 'hlt' | 'print-done' | 'assert-fail' | 'syncs' | 'mmio' | 'ud2' | 'out' | 'throws' | 'asm-error' | 'closes-vm' | 'soup';

function program(c: Ctx, p: Program, target: { vm: Vm | null }, long: boolean): (a: Assembler, io: lib.GuestIo) => void {
  const soup = c.rng.fork(7);
  return (a, io) => {
    switch (p) {
      case 'done':
        io.done();
        break;
      case 'spin':
        a.label('spin').jmp('spin');
        break;
      case 'hlt':
        a.hlt();
        break;
      case 'print-done':
        a.mov(long ? 'rax' : 'eax', 42);
        io.print(long ? 'rax' : 'eax');
        io.done();
        break;
      case 'assert-fail':
        a.xor('eax', 'eax').cmp('eax', 1);
        io.assert('e', 7);
        io.done();
        break;
      case 'syncs':
        io.sync(1);
        io.sync(2);
        io.done();
        break;
      case 'mmio':
        a.mov(mem(32, { disp: 0xd0000000 }), 'eax');
        io.done();
        break;
      case 'ud2':
        a.ud2();
        break;
      case 'out':
        a.out(0x80, 'al').hlt();
        break;
      case 'throws':
        throw new HazardSentinel('a guest program callback');
      case 'asm-error':
        a.mov('rax', 'cr9' as lib.Reg);
        break;
      case 'closes-vm':
        target.vm?.close();
        io.done();
        break;
      default:
        for (let i = soup.range(1, 12); i > 0; i--) asmInsn(soup, a);
        io.done();
    }
  };
}

function guestCreate(c: Ctx): Call | null {
  const st = c.st;
  const r = c.rng;
  // A Guest needs gpa 0..memory size free and a vCPU id not taken: mostly
  // pick a VM whose low 2 MiB are free (else a new VM), and a fresh id, so
  // that guests get built and run; sometimes any VM and the default id,
  // which meet the overlap and EEXIST errors.
  const lowFree = st.live(st.vms).filter((v) => !st.live(st.slots).some((s) => st.parent.get(s) === v && s.gpa < 2 * MIB));
  const fresh = r.chance(0.8);
  let vm: Vm | null = fresh && lowFree.length > 0 ? r.pick(lowFree) : anyOf(c, st.vms);
  const kvm = st.live(st.kvms)[0];
  const newVm = fresh && lowFree.length === 0 && kvm !== undefined && st.live(st.vms).length < 5;
  if (newVm) vm = null;
  else if (vm === null) return null;
  if (vm !== null && (st.vcpusMade.get(vm) ?? 0) >= 6 && !vm.closed) return null;
  const made = vm === null ? 0 : (st.vcpusMade.get(vm) ?? 0);
  if (vm !== null) {
    st.vcpusMade.set(vm, made + 1);
    c.touched.add(vm);
  }
  const long = r.chance(0.6);
  const p = r.weighted<Program>([
    [6, 'done'],
    [6, 'spin'],
    [3, 'hlt'],
    [3, 'print-done'],
    [3, 'assert-fail'],
    [3, 'syncs'],
    [2, 'mmio'],
    [2, 'ud2'],
    [2, 'out'],
    [1, 'throws'],
    [1, 'asm-error'],
    [1, 'closes-vm'],
    [3, 'soup'],
  ]);
  const memory = r.weighted<unknown>([
    [10, undefined],
    [4, { kind: 'guest-memfd' }],
    [3, { size: 0x20000 }],
    [2, { size: 0x40000, kind: 'guest-memfd' }],
    [1, { size: 0x1f000 }],
    [1, { size: 0 }],
    [1, { size: 0x100001000 }],
    [1, { kind: 'bogus' }],
    [1, { size: 2 ** 53 }],
  ]);
  const entry = r.weighted<unknown>([
    [12, undefined],
    [1, 0x3000],
    [1, 0x1ff000],
    [1, -1],
    [1, 2 ** 40],
  ]);
  const vcpuId = fresh ? 10 + made : undefined;
  const target = { vm };
  const opts: Record<string, unknown> = { code: program(c, p, target, long) };
  if (memory !== undefined) opts.memory = memory;
  if (entry !== undefined) opts.entry = entry;
  if (vcpuId !== undefined) opts.vcpuId = vcpuId;
  const shown = `{code: ${p}${memory === undefined ? '' : `, memory: ${show(memory)}`}${entry === undefined ? '' : `, entry: ${show(entry)}`}${vcpuId === undefined ? '' : `, vcpuId: ${vcpuId}`}}`;
  const hostileTarget = vm ?? kvm;
  const { value, note } =
    hostileTarget === undefined
      ? { value: opts, note: '' }
      : c.hostile(
          opts,
          hostileTarget,
          vm === null
            ? undefined
            : () => c.add('guest', Guest.realMode(vm as Vm, { code: (_a, io) => io.done(), memory: { size: 0x20000 }, vcpuId: 99 }), vm as Vm),
          0.1,
        );
  const fn = long ? 'longMode' : 'realMode';
  const where = vm === null ? `a new VM of ${st.name(kvm)}` : st.name(vm);
  return call(`Guest.${fn}`, `Guest.${fn}(${where}, ${shown})${note}`, () => {
    const v = target.vm ?? c.add('vm', (kvm as Kvm).createVm());
    target.vm = v;
    const g = long ? Guest.longMode(v, value as unknown as lib.GuestOptions) : Guest.realMode(v, value as unknown as lib.GuestOptions);
    c.add('guest', g, v);
    c.add('vcpu', g.vcpu, v);
    if (p === 'spin') st.spinners.add(g.vcpu);
    c.add('slot', g.memslot, v);
    st.usedIds.add(g.memslot.slot);
    if (g.guestMemfd !== null) c.add('gmem', g.guestMemfd, v);
  });
}

function guestOp(c: Ctx): Call | null {
  const g = anyOf(c, c.st.guests);
  if (g === null) return null;
  const vm = vmOf(c, g);
  const r = c.rng;
  const name = c.st.name(g);
  const what = r.weighted<string>([
    [10, 'runUntilDone'],
    [3, 'view'],
    [1, 'label'],
    [1, 'enableMapGpaRangeExits'],
    [2, 'close'],
  ]);
  switch (what) {
    case 'runUntilDone': {
      // Never 0: that is "no deadline" (as for run()), and the guest may spin.
      const opts: Record<string, unknown> = {
        timeoutMs: r.weighted<unknown>([
          [10, r.range(20, 400)],
          [1, 1],
          [1, -5],
          [1, NaN],
        ]),
      };
      const onSync = r.pick(['none', 'none', 'noop', 'close-guest', 'close-vm', 'throw', 'getRegs', 'reenter']);
      if (onSync !== 'none') {
        // eslint-disable-next-line @typescript-eslint/require-await -- async with no await on purpose: the 'throw' hazard must reach the runner as a rejected promise
        opts.onSync = async (_n: number, gg: Guest) => {
          if (onSync === 'close-guest') gg.close();
          else if (onSync === 'close-vm') vm?.close();
          else if (onSync === 'throw') throw new HazardSentinel('onSync');
          else if (onSync === 'getRegs') gg.vcpu.getRegs();
          else if (onSync === 'reenter') c.secondary('runUntilDone inside onSync', () => gg.runUntilDone({ timeoutMs: 50 }));
        };
      }
      const onExit = r.pick(['none', 'none', 'true', 'false', 'throw']);
      if (onExit !== 'none') {
        let n = 0;
        opts.onExit = () => {
          if (onExit === 'throw') throw new HazardSentinel('onExit');
          return onExit === 'true' && ++n < 20;
        };
      }
      if (r.chance(0.2)) opts.convertOnMemoryFault = r.pick([true, { discard: true }]);
      if (r.chance(0.1)) opts.mapGpaRange = true;
      const shown = `{timeoutMs: ${show(opts.timeoutMs)}, onSync: ${onSync}, onExit: ${onExit}${opts.convertOnMemoryFault ? ', convertOnMemoryFault' : ''}${opts.mapGpaRange ? ', mapGpaRange' : ''}}`;
      const { value, note } = c.hostile(opts, g.vcpu, () => g.runUntilDone({ timeoutMs: 20 }), 0.1);
      return call('guest.runUntilDone', `await ${name}.runUntilDone(${shown})${note}`, async () => await g.runUntilDone(value as lib.RunUntilDoneOptions));
    }
    case 'view': {
      const a = r.pick<unknown>([0, 0x1000, 0x10000, 0x1ff000, 0x200000, -1]);
      const l = r.pick<unknown>([1, PAGE, 0x200000, G4, NaN]);
      return call('guest.view', `${name}.view(${show(a)}, ${show(l)}) and touch it`, () => touch(g.view(a as number, l as number), c.st));
    }
    case 'label': {
      const l = r.pick<unknown>(['spin', 'nope', '', 42]);
      return call('guest.label', `${name}.label(${show(l)})`, () => g.label(l as string));
    }
    case 'enableMapGpaRangeExits':
      return call('guest.enableMapGpaRangeExits', `${name}.enableMapGpaRangeExits()`, () => g.enableMapGpaRangeExits());
    default:
      return call('guest.close', `${name}.close()`, () => g.close());
  }
}

// ---- Assembler ------------------------------------------------------------------------------------

const ASM_REGS = [
  'rax',
  'rbx',
  'rcx',
  'rdx',
  'rsi',
  'rdi',
  'rsp',
  'rbp',
  'r8',
  'r15',
  'eax',
  'ebx',
  'esp',
  'r9d',
  'ax',
  'bx',
  'si',
  'bp',
  'r10w',
  'al',
  'ah',
  'bh',
  'spl',
  'r11b',
  'cr0',
  'cr3',
  'cr4',
  'cr8',
  'cs',
  'ds',
  'ss',
  'fs',
];
const ASM_BAD = ['rip', 'xmm0', '', 'cr9', 'RAX', 42, null, undefined, {}, [], 'label1'];
const ASM_IMMS: unknown[] = [
  0,
  1,
  -1,
  127,
  128,
  -128,
  255,
  256,
  0x7fff,
  0x8000,
  0xffff,
  0x10000,
  2 ** 31 - 1,
  2 ** 31,
  2 ** 32 - 1,
  2 ** 32,
  2 ** 53 - 1,
  2 ** 53,
  -(2 ** 31),
  1n << 63n,
  1n << 64n,
  -(1n << 63n),
  (1n << 64n) - 1n,
  1.5,
  NaN,
  Infinity,
  '5',
  true,
];
const ASM_METHODS = [
  'mov',
  'push',
  'pop',
  'add',
  'sub',
  'cmp',
  'and',
  'or',
  'xor',
  'inc',
  'dec',
  'jmp',
  'je',
  'jne',
  'jcc',
  'call',
  'ljmp',
  'out',
  'in',
  'lgdt',
  'lidt',
  'nop',
  'hlt',
  'cli',
  'sti',
  'ret',
  'ud2',
  'cpuid',
  'rdmsr',
  'wrmsr',
  'pause',
  'vmcall',
  'vmmcall',
] as const;

function asmOperand(r: Rng): unknown {
  return r.weighted<() => unknown>([
    [10, () => r.pick(ASM_REGS)],
    [8, () => r.pick(ASM_IMMS)],
    [5, () => asmMem(r)],
    [2, () => offset(r.pick(['label1', 'label2', 'nope']), r.pick<number | bigint>([0, 4, -8, 1n << 40n]))],
    [2, () => r.pick(ASM_BAD)],
  ])();
}

function asmMem(r: Rng): unknown {
  try {
    return r.weighted<() => unknown>([
      [
        4,
        () =>
          mem(r.pick([8, 16, 32, 64]) as 8, r.pick(['rax', 'rbx', 'ebx', 'bx', 'rsp', 'r12', 'si']) as 'rax', r.pick<number>([0, 8, -8, 0x7fffffff, 2 ** 31])),
      ],
      [
        3,
        () =>
          mem(r.pick([8, 16, 32, 64]) as 8, {
            base: r.pick(['rax', 'rbp', 'bp', undefined]) as 'rax',
            index: r.pick(['rsi', 'rsp', 'esi', undefined]) as 'rsi',
            scale: r.pick([1, 2, 4, 8, 3, undefined]) as 1,
            disp: r.pick([0, 16, 1n << 40n]),
          }),
      ],
      [2, () => mem(r.pick([32, 64]) as 32, r.chance(0.5) ? { label: r.pick(['label1', 'nope']) } : { rip: r.pick(['label1', 'nope']) })],
      [1, () => mem(r.pick([7, 128, 0]) as 8, 'rax' as never)],
    ])();
  } catch (e) {
    return e instanceof lib.AsmError ? 'rax' : 'rbx';
  }
}

/** One random instruction into `a` (may throw AsmError/TypeError as the call's result). */
function asmInsn(r: Rng, a: Assembler): void {
  const m = r.pick(ASM_METHODS);
  const args: unknown[] = [];
  if (m === 'jmp' || m === 'je' || m === 'jne' || m === 'call') args.push(r.pick<unknown>(['label1', 'label2', 'nope', 42]));
  else if (m === 'jcc') args.push(r.pick<unknown>(['e', 'nz', 'g', 'bogus']), r.pick(['label1', 'label2']));
  else if (m === 'ljmp')
    args.push(r.pick<unknown>([8, 0x10, 2 ** 16, -1]), r.pick<unknown>(['label1', 0x1000, 2 ** 33]), r.pick<unknown>([undefined, 16, 32, 64]));
  else if (m === 'out') args.push(r.pick<unknown>([0x80, 255, 256, 'dx', -1]), r.pick<unknown>(['al', 'ax', 'eax', 'rax', 'bl']));
  else if (m === 'in') args.push(r.pick<unknown>(['al', 'ax', 'eax', 'rax']), r.pick<unknown>([0x80, 'dx', 300]));
  else if (m === 'lgdt' || m === 'lidt') args.push(asmMem(r), r.pick<unknown>([undefined, 16, 32, 64]));
  else if (['nop', 'hlt', 'cli', 'sti', 'ret', 'ud2', 'cpuid', 'rdmsr', 'wrmsr', 'pause', 'vmcall', 'vmmcall'].includes(m)) {
    /* no operands */
  } else if (m === 'push' || m === 'pop' || m === 'inc' || m === 'dec') args.push(asmOperand(r));
  else args.push(asmOperand(r), asmOperand(r));
  (a as unknown as Record<string, (...x: unknown[]) => unknown>)[m]!(...args);
}

function asmOp(c: Ctx): Call | null {
  const r = c.rng;
  const st = c.st;
  const a = st.asms.length > 0 && r.chance(0.85) ? r.pick(st.asms) : null;
  if (a === null || r.chance(0.05)) {
    if (st.asms.length >= 6) st.asms.shift();
    const bits = r.weighted<unknown>([
      [6, 64],
      [3, 16],
      [3, 32],
      [1, 8],
      [1, '64'],
      [1, undefined],
    ]);
    const origin = r.weighted<unknown>([
      [6, undefined],
      [3, 0x1000],
      [1, 2 ** 32 - 1],
      [1, 2 ** 32],
      [1, (1n << 64n) - 1n],
      [1, 1n << 64n],
      [1, -1],
      [1, 1.5],
      [1, 'x'],
    ]);
    const opts = origin === undefined ? { bits } : { bits, origin };
    return call('new Assembler', `new Assembler(${show(opts)})`, () => c.add('asm', new Assembler(opts as { bits: 64 })));
  }
  const name = st.name(a);
  const sub = c.rng.fork(3);
  const what = r.weighted<string>([
    [12, 'insn'],
    [3, 'data'],
    [2, 'align'],
    [2, 'label'],
    [1, 'code'],
    [3, 'assemble'],
    [1, 'ucall'],
  ]);
  switch (what) {
    case 'insn':
      return call('asm.insn', `${name}.<random instruction from stream ${sub.seed}>`, () => asmInsn(sub, a));
    case 'data': {
      const m = r.pick(['db', 'dw', 'dd', 'dq'] as const);
      const plain = Array.from({ length: r.int(6) }, () =>
        r.chance(0.5) ? r.pick(ASM_IMMS) : r.pick<unknown>(['label1', 'nope', {}, null, undefined, Symbol('d'), [1], -129, 256, 2n ** 64n]),
      );
      const values = r.chance(0.15) ? c.hostileArray(plain, a) : r.chance(0.05) ? r.pick<unknown>([null, 'abc', 42, new Uint8Array(3), { length: 2 }]) : plain;
      return call(`asm.${m}`, `${name}.${m}(${show(values)})`, () => (a as unknown as Record<string, (v: unknown) => unknown>)[m]!(values));
    }
    case 'align': {
      const n = r.pick<unknown>([1, 2, 16, 4096, 3, 0, -1, 2 ** 20, 2 ** 32, 2 ** 52, NaN, '16', 16n]);
      const fill = r.pick<unknown>([undefined, 0x90, 0, 255, 256, -1, 'x']);
      return call('asm.align', `${name}.align(${show(n)}${fill === undefined ? '' : `, ${show(fill)}`})`, () =>
        fill === undefined ? a.align(n as number) : a.align(n as number, fill as number),
      );
    }
    case 'label': {
      const l = r.pick<unknown>(['label1', 'label2', 'spin', '.L$x', '1abc', 'rax', 'rip', '', 42, null, 'a'.repeat(300)]);
      return call('asm.label', `${name}.label(${show(l)})`, () => a.label(l as string));
    }
    case 'code': {
      const b = r.pick<unknown>([16, 32, 64, 8, '32']);
      return call('asm.code', `${name}.code(${show(b)})`, () => a.code(b as 16));
    }
    case 'ucall': {
      const cmd = r.pick<unknown>([1, 2, 3, 4, 99, -1, 2 ** 32]);
      const arg = r.pick<unknown>([0, 'rax', 'eax', 'ax', 'rsi', 1n << 40n, 'cr0', 'r8d']);
      return call('emitUcall', `emitUcall(${name}, ${show(cmd)}, ${show(arg)})`, () => lib.emitUcall(a, cmd as number, arg as number));
    }
    default:
      return call('asm.assemble', `${name}.assemble()`, () => {
        const out = a.assemble();
        return out.bytes.length;
      });
  }
}

// ---- raw --------------------------------------------------------------------------------------------

function rawOp(c: Ctx): Call | null {
  const st = c.st;
  const r = c.rng;
  const what = r.weighted<string>([
    [3, 'createVm'],
    [8, 'region'],
    [2, 'attributes'],
    [3, 'createGuestMemfd'],
    [3, 'checkExtension'],
    [2, 'enableCap'],
    [1, 'setNrMmuPages'],
    [1, 'interrupts'],
    [3, 'fallocate'],
    [2, 'fstat'],
    [2, 'isCloexec'],
    [2, 'close'],
    [1, 'memfd'],
    [1, 'mempolicy'],
    [2, 'fileio'],
  ]);
  switch (what) {
    case 'createVm': {
      if (st.live(st.rawVms).length >= 3) return null;
      const k = anyOf(c, st.kvms);
      if (k === null) return null;
      const type = r.pick<unknown>([0, 0, 0, 1, 2, 5, 6, 2 ** 31, -1, 1.5]);
      return call('raw.createVm', `raw.createVm(${st.name(k)}, ${show(type)})`, () => c.add('rawvm', raw.createVm(k, type as number)));
    }
    case 'region': {
      const v = anyOf(c, st.rawVms);
      if (v === null) return null;
      const gm = st.rawGmems.filter((g) => g.vm === v);
      const g = gm.length > 0 && r.chance(0.4) ? r.pick(gm) : null;
      const req = {
        slot: r.pick<unknown>([0, 1, 2, 3, r.int(16), 32764, 65536, 65536 + 1, 2 ** 32 - 1, -1, 1.5]),
        flags: r.pick<unknown>([0, 0, 1, 2, 4, 4, 7, 8, 2 ** 31, -1]),
        guestPhysAddr: gpaValue(r, []),
        memorySize: r.chance(0.7) ? pages(r, 16) : r.pick<unknown>([0, 0, 2 ** 43, (1n << 64n) - 4096n, 100, -1]),
        // Never an address inside the process (see the header).
        userspaceAddr: r.pick<unknown>([0, 0, st.probeAddr, 100, 2n ** 47n, 2n ** 56n, (1n << 64n) - 4096n, -1]),
        guestMemfdOffset: r.pick<unknown>([0, 0, PAGE, 100, 1n << 63n, -1]),
        guestMemfd: g !== null ? g.fd : r.pick<unknown>([0, 100000, 2 ** 31, -1, 'x']),
      };
      return call('raw.setUserMemoryRegion2', `raw.setUserMemoryRegion2(${st.name(v)}, ${show(req, st)})`, () => {
        const fdNum = req.guestMemfd instanceof lib.raw.RawFd ? req.guestMemfd.fd : req.guestMemfd;
        raw.setUserMemoryRegion2(v, { ...req, guestMemfd: fdNum } as lib.raw.RawRegion);
      });
    }
    case 'attributes': {
      const v = r.chance(0.5) ? anyOf(c, st.rawVms) : anyOf(c, st.vms);
      if (v === null) return null;
      const a = {
        address: gpaValue(r, []),
        size: r.pick<unknown>([PAGE, 0, 2 ** 40, -1]),
        attributes: r.pick<unknown>([0, 8, 1n << 63n, -1]),
        flags: r.pick<unknown>([undefined, 0, 1, 1n << 63n]),
      };
      return call('raw.setMemoryAttributes', `raw.setMemoryAttributes(${st.name(v)}, ${show(a)})`, () =>
        raw.setMemoryAttributes(v, a as { address: number; size: number; attributes: number }),
      );
    }
    case 'createGuestMemfd': {
      if (st.live(st.rawGmems).length >= 6) return null;
      const v = r.chance(0.5) ? anyOf(c, st.rawVms) : anyOf(c, st.vms);
      if (v === null) return null;
      const size = gmemSize(r);
      const flags = r.pick<unknown>([undefined, 0, 1, 3, 4, 1n << 32n, 1n << 63n, (1n << 64n) - 1n, 2 ** 32, -1]);
      const args = flags === undefined ? { size } : { size, flags };
      return call('raw.createGuestMemfd', `raw.createGuestMemfd(${st.name(v)}, ${show(args)})`, () => {
        const fd = raw.createGuestMemfd(v, args as { size: number });
        c.add('rawgmem', { fd, size: Number(asU64(size) ?? 0n), vm: v });
      });
    }
    case 'checkExtension': {
      const t = r.pick<object[]>([st.kvms, st.vms, st.rawVms, st.gmems, st.vcpus]);
      const o = anyOf(c, t as { fd: number }[]);
      if (o === null) return null;
      const cap = r.pick<unknown>([...CAP_VALUES, 0, 2 ** 31, -1, 'GUEST_MEMFD']);
      return call('raw.checkExtension', `raw.checkExtension(${st.name(o)}, ${show(cap)})`, () => raw.checkExtension(o, cap as number));
    }
    case 'enableCap': {
      const v = anyOf(c, st.rawVms);
      if (v === null) return null;
      const cap = r.pick<unknown>([lib.Cap.EXIT_HYPERCALL, 999999, -1, 'x']);
      const args = r.pick<unknown>([[], [1n << 12n], [1, 2, 3, 4, 5], [-1], null]);
      return call('raw.enableCap', `raw.enableCap(${st.name(v)}, ${show(cap)}, ${show(args)})`, () => raw.enableCap(v, cap as number, args as number[]));
    }
    case 'setNrMmuPages': {
      const v = anyOf(c, st.rawVms);
      if (v === null) return null;
      const pages = r.pick<unknown>([0, 1, 64, 2 ** 32, 2 ** 53, 1n << 63n, -1, 1.5, 'x']);
      return call('raw.setNrMmuPages', `raw.setNrMmuPages(${st.name(v)}, ${show(pages)})`, () => raw.setNrMmuPages(v, pages as number));
    }
    case 'interrupts': {
      // A signal timer around a VM creation (which repeats KVM_CREATE_VM on
      // EINTR), around nothing, or with a body that is not a function.
      const k = anyOf(c, st.kvms);
      const us = r.pick<unknown>([1000, 1000, 2000, 1_000_000, 0, 999, 1_000_001, -1, 1.5, 'x', null, 5n]);
      const body = r.pick(['createVm', 'nothing', 'not a function'] as const);
      const [fn, what]: [() => void, string] =
        body === 'createVm' && k !== null
          ? [() => k.createVm().close(), `${st.name(k)}.createVm().close()`]
          : [body === 'not a function' ? (7 as unknown as () => void) : () => undefined, body];
      return call('raw.withInterrupts', `raw.withInterrupts(${show(us)}, ${what})`, () => raw.withInterrupts(us as number, fn));
    }
    case 'fallocate': {
      const pickRaw = st.rawGmems.length > 0 && r.chance(0.5);
      const g = pickRaw ? r.pick(st.rawGmems) : anyOf(c, st.gmems);
      if (g === null) return null;
      const fdObj = pickRaw ? (g as { fd: lib.raw.RawFd }).fd : (g as GuestMemfd);
      const size = pickRaw ? (g as { size: number }).size : (g as GuestMemfd).size;
      const mode = r.pick<unknown>([1, 1, 3, 3, 0, 2, 0x10, 0x20, 0x40, -1]);
      const off = fileOffset(r, size);
      const len = mode === 3 || mode === 2 ? fileLength(r) : clampAlloc(size, off, fileLength(r));
      return call('raw.fallocate', `raw.fallocate(${st.name(g)}, ${show(mode)}, ${show(off)}, ${show(len)})`, () =>
        raw.fallocate(fdObj, mode as number, off as number, len as number),
      );
    }
    case 'memfd': {
      // Made and closed within the call: a plain file, nothing to track.
      const name = r.pick<unknown>(['kvm-gmem', '', 'x'.repeat(300), 'a\0b', 7, undefined]);
      const flags = r.pick<unknown>([undefined, 0, 1, 2, 4, 0x1000_0000, -1, 1.5]);
      return call('raw.memfdCreate', `raw.memfdCreate(${show(name)}, ${show(flags)}), fstat, close`, () => {
        using f = raw.memfdCreate(name as string, flags as number);
        raw.fstat(f);
      });
    }
    case 'fileio': {
      // read/write/pread/pwrite/ftruncate on the package's own fds (KVM
      // refuses them) or on a memfd made within the call; hostile buffers
      // and offsets. None may block: an fd that could wait is polled first.
      const t = r.pick<object[]>([st.kvms, st.vms, st.gmems, st.vcpus]);
      const o = r.chance(0.3) ? null : anyOf(c, t as { fd: number }[]);
      const op = r.pick(['read', 'write', 'pread', 'pwrite', 'ftruncate'] as const);
      const buf = r.pick<unknown>([new Uint8Array(64), new Uint8Array(0), new Uint8Array(PAGE + 1), new Uint16Array(4), [1, 2], null, 'x']);
      const off = r.pick<unknown>([0, 1, PAGE, 2 ** 53 - 1, 1n << 63n, (1n << 64n) - 1n, -1, 1.5]);
      const run = (f: { fd: number } | number): unknown => {
        switch (op) {
          case 'read':
            return raw.read(f, buf as Uint8Array);
          case 'write':
            return raw.write(f, buf as Uint8Array);
          case 'pread':
            return raw.pread(f, buf as Uint8Array, off as number);
          case 'pwrite':
            return raw.pwrite(f, buf as Uint8Array, off as number);
          default:
            return raw.ftruncate(f, off as number);
        }
      };
      const target = o === null ? 'a memfd' : st.name(o);
      return call(`raw.${op}`, `raw.${op}(${target}, ${show(buf)}, ${show(off)})`, () => {
        if (o !== null) return run(o);
        using f = raw.memfdCreate('kvm-gmem-fuzz');
        return run(f);
      });
    }
    case 'mempolicy': {
      // The thread's policy, set and put back to MPOL_DEFAULT.
      const mode = r.pick<unknown>([0, 1, 2, 3, 4, 5, 999, -1, 'x']);
      const nodes = r.pick<unknown>([[], [0], [0, 1], [1023], [1024], [-1], 'x', null, [1.5]]);
      return call('raw.setMempolicy', `raw.setMempolicy(${show(mode)}, ${show(nodes)}), getMempolicy, back to default`, () => {
        try {
          raw.setMempolicy(mode as number, nodes as number[]);
          raw.getMempolicy();
        } finally {
          raw.setMempolicy(0, []);
        }
      });
    }
    case 'fstat':
    case 'isCloexec': {
      const t = r.pick<object[]>([st.kvms, st.vms, st.rawVms, st.gmems, st.vcpus]);
      const o = anyOf(c, t as { fd: number }[]);
      if (o === null) return null;
      return call(`raw.${what}`, `raw.${what}(${st.name(o)})`, () => (what === 'fstat' ? raw.fstat(o) : raw.isCloexec(o)));
    }
    default: {
      const pickGmem = st.rawGmems.length > 0 && r.chance(0.5);
      const o = pickGmem ? r.pick(st.rawGmems).fd : anyOf(c, st.rawVms);
      if (o === null) return null;
      return call('raw.close', `${st.name(o)}.close()`, () => o.close());
    }
  }
}

// ---- hazards: close anything, worker threads ----------------------------------------------------------

function closeSomething(c: Ctx): Call | null {
  const st = c.st;
  const r = c.rng;
  const kind = r.weighted<Kind>([
    [3, 'kvm'],
    [4, 'vm'],
    [4, 'gmem'],
    [5, 'slot'],
    [4, 'map'],
    [4, 'vcpu'],
    [2, 'guest'],
    [1, 'rawvm'],
  ]);
  const o = anyOf(c, st.list(kind), 0.95);
  if (o === null) return null;
  const vm = st.parent.get(o);
  if (vm !== undefined) c.touched.add(vm);
  if (o instanceof lib.Vm) c.touched.add(o);
  const dispose = r.chance(0.3);
  return call(
    `close.${kind}`,
    `${st.name(o)}${dispose ? '[Symbol.dispose]()' : o instanceof Mapping ? '.unmap()' : o instanceof lib.Memslot ? '.delete()' : '.close()'}`,
    () => (dispose ? (o as Disposable)[Symbol.dispose]() : closeAny(o)),
  );
}

function workerOp(c: Ctx): Call | null {
  // Not under RLIMIT_AS: V8 aborts the whole process ("Fatal process OOM")
  // when a new isolate cannot reserve its address space, by design. Not
  // under a lowered RLIMIT_NOFILE either: Node's own worker bootstrap then
  // fails loading its modules ("Worker initialization failure: EMFILE",
  // "EMFILE ... open 'dist/lib/kvm/vcpu.js'") and leaves the new loop's epoll
  // fd open, which is Node's behaviour, not this package's; the nofile
  // hazard is about this package's calls, which those children still make.
  if (c.env.inWorker || !c.hz.workers || c.env.addressSpaceLimited || c.env.nofileLimited) return null;
  const r = c.rng;
  const mode = r.weighted<WorkerMode>([
    [4, 'slice'],
    [3, 'failing-loop'],
    [3, 'run'],
    [2, 'run-sync-loop'],
  ]);
  const plan: WorkerPlan = {
    mode,
    seed: r.u32(),
    calls: r.range(5, 40),
    variant: r.int(6),
    terminateAfterMs: mode === 'slice' && r.chance(0.3) ? -1 : r.pick([0, 0, 1, 2, 5, 10, 30, 100]),
    leaveOpen: r.chance(0.5),
  };
  c.workerCall = true;
  return call(
    'worker',
    `worker thread ${JSON.stringify(plan)}, terminated ${plan.terminateAfterMs < 0 ? 'never (runs to the end)' : `${plan.terminateAfterMs} ms after it is ready`}`,
    async () => {
      const out = await runWorker(c.env.threadScript, plan, { outFd: c.env.outFd, files: c.st.files, probeAddr: String(c.st.probeAddr) });
      for (const e of out.errors) c.observe('an exception escaped the worker thread', e);
      if (out.startFailed !== null) return `not started: ${out.startFailed}`;
      return out.exitCode;
    },
  );
}

/** Touches a view or an exit an earlier call returned: once its memory is gone it must have detached (length 0, or TypeError for a DataView). */
function staleOp(c: Ctx): Call | null {
  const r = c.rng;
  if (c.st.exits.length > 0 && r.chance(0.4)) {
    const i = r.int(c.st.exits.length);
    const e = c.st.exits[i] as lib.VcpuExit;
    return call('stale.exit', `exit #${i} of the last runs (${e.kind}): read its data and ret`, () => {
      const x = e as { data?: unknown; ret?: bigint };
      if ('data' in x) touch(x.data, c.st);
      if (e.kind === 'hypercall') (e as lib.HypercallExit).ret = (e as lib.HypercallExit).ret + 1n;
    });
  }
  if (c.st.views.length === 0) return null;
  const i = r.int(c.st.views.length);
  const v = c.st.views[i] as Uint8Array | DataView;
  return call('stale.view', `view #${i} made by an earlier call (${v.constructor.name}): touch its first and last byte`, () => touch(v, c.st));
}

// ---- the table of operations ---------------------------------------------------------------------------

type Gen = (c: Ctx) => Call | null;

/** [weight, generator]; weights are per call, before a generator without a target passes. */
export const OPS: readonly (readonly [number, string, Gen])[] = [
  [3, 'Kvm.open', kvmOpen],
  [3, 'checkExtension', checkExtension],
  [3, 'checkExtensions', checkExtensions],
  [2, 'kvm.query', kvmQuery],
  [4, 'kvm.createVm', createVm],
  [5, 'vm.createGuestMemfd', createGuestMemfd],
  [14, 'vm.addMemslot', addMemslot],
  [3, 'vm.query', vmQuery],
  [2, 'vm.setMemoryAttributes', setMemoryAttributes],
  [1, 'vm.enableCap', enableCap],
  [2, 'vm.createVcpu', createVcpu],
  [7, 'gmem', gmemOp],
  [10, 'memslot', memslotOp],
  [3, 'Mapping.create', mappingCreate],
  [4, 'mapping', mappingOp],
  [8, 'vcpu', vcpuOp],
  [3, 'Guest.create', guestCreate],
  [4, 'guest', guestOp],
  [5, 'asm', asmOp],
  [6, 'raw', rawOp],
  [5, 'close', closeSomething],
  [3, 'stale', staleOp],
  [1, 'worker', workerOp],
];

/** Draws the next call (a generator without a target draws again). */
export function nextCall(c: Ctx, exclude: RegExp | null): Call {
  for (let tries = 0; tries < 100; tries++) {
    const [, name, gen] = c.rng.weighted(OPS.map((o) => [o[0], o] as const));
    if (exclude !== null && exclude.test(name)) continue;
    const call = gen(c);
    if (call !== null && (exclude === null || !exclude.test(call.name))) return call;
  }
  // Nothing to act on (everything closed and the limits reached): start over with a Kvm.
  return kvmOpen(c) ?? call('Kvm.open', 'Kvm.open()', () => c.add('kvm', Kvm.open()));
}

/** The worker-thread script, next to this module in dist/tools/fuzz/. */
export const THREAD_SCRIPT = new URL('./thread.js', import.meta.url);
