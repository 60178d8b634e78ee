// Random KVM_SET_USER_MEMORY_REGION2 requests for the differential memslot
// test. Each request is built from the model's current table (so deletes and
// modifications hit existing slots) and, some of the time, bent by one
// mutation that breaks exactly one kernel rule. Everything random comes from
// one seeded PRNG, so a seed replays the same run.
//
// Domain: every gpa range that can be accepted ends below 2^39, under the
// largest gfn any host here maps (2^52 on the development host; a QEMU TCG
// guest may report only 40 physical address bits), because kvm_mmu_max_gfn()
// is a host property the model does not know.
import type { GuestMemfdTarget, MemslotLimits, RegionRequest } from '../../lib/rules/memslot.js';
import type { MemslotTable, SlotEntry } from '../../lib/model/memslot-table.js';
import { MemFlag } from '../../lib/index.js';

const PAGE = 4096n;
const U64_END = 1n << 64n;
/** Accepted gpas: pages [0, 64) so slots collide often, plus a few far ones. */
const GRID_PAGES = 64;
const HIGH_GPAS = [1n << 32n, 1n << 36n, (1n << 39n) - 32n * PAGE];
/** Low slot ids the run lives in; every id 0..15 is probed at the end. */
export const LOW_IDS = 16;

/** sfc32: small, fast, good enough for test input, seeded by one u32. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 15; i++) this.u32();
  }

  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 2 ** 32) * n);
  }

  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }

  /** Picks a key by weight. */
  weighted<K extends string>(weights: Readonly<Record<K, number>>): K {
    const keys = Object.keys(weights) as K[];
    let r = this.int(keys.reduce((s, k) => s + weights[k], 0));
    for (const k of keys) {
      r -= weights[k];
      if (r < 0) return k;
    }
    return keys[keys.length - 1] as K;
  }
}

/** A value for the guest_memfd field: what the model is told, and the fd number sent. */
export interface FdChoice {
  target: GuestMemfdTarget;
  fd: number;
}

export interface GenContext {
  limits: MemslotLimits;
  table: MemslotTable;
  /** guest_memfds of the VM under test, of different sizes. */
  ownFiles: FdChoice[];
  /** A guest_memfd of another VM. */
  foreignFiles: FdChoice[];
  /** Open fds that are not guest_memfds (the VM fd, /dev/null). */
  notGuestMemfd: FdChoice[];
  /** fd numbers that name no open file. */
  badFds: FdChoice[];
  /** Start of a real anonymous mapping of 64 pages, for userspace_addr. */
  userBase: bigint;
}

export interface GeneratedOp {
  /** What the generator meant, e.g. 'modify-plain/move+wild:unaligned-gpa'. */
  label: string;
  request: RegionRequest;
  /** The guest_memfd field as sent (the fd number behind request.guestMemfd). */
  guestMemfdFd: number;
}

// Weights, tuned so that in 3,000 requests every verdict the test asks for
// (at least 5 times) occurs often enough: over 1,000 seeds each, the rarest
// came 8 times on VMs with guest_memfd memslots (6.12 sw-protected, 7.3) and
// 12 on VMs without them (6.12's default VM, where every guest_memfd request
// stops at the flags check, and hosts without guest_memfd). 'wild' takes a
// normal request and breaks one rule (WILD).
const OPS = {
  'add-plain': 24,
  'add-gmem': 20,
  'delete-existing': 13,
  'delete-missing': 3,
  'modify-plain': 16,
  'modify-gmem': 7,
  wild: 17,
} as const;

const WILD = {
  'unaligned-gpa': 3,
  'unaligned-size': 3,
  'unaligned-uaddr': 3,
  'unaligned-offset': 3,
  'unknown-flag': 3,
  'readonly+gmem': 2,
  'log+gmem': 2,
  'high-slot-id': 4,
  'bad-address-space': 3,
  'gpa-wrap': 5,
  'offset-wrap': 2,
  'offset-negative': 2,
  'uaddr-limit': 4,
  'too-large': 3,
} as const;

const FLAG_LOG = MemFlag.LOG_DIRTY_PAGES;
const FLAG_RO = MemFlag.READONLY;
const FLAG_GMEM = MemFlag.GUEST_MEMFD;

export function generateOp(rng: Rng, ctx: GenContext): GeneratedOp {
  const kind = rng.weighted(OPS);
  if (kind !== 'wild') return build(rng, ctx, kind);
  // On a VM that refuses KVM_MEM_GUEST_MEMFD a guest_memfd base stops at the
  // flags check whatever the mutation breaks, so the bases there are plain
  // (with the guest_memfd bases, 3,000 requests left a rule under five hits
  // for about 1 seed in 150, and the run failed as degenerate).
  const bases = ctx.limits.guestMemfd
    ? (['add-plain', 'add-gmem', 'add-gmem', 'delete-existing', 'modify-plain', 'modify-gmem'] as const)
    : (['add-plain', 'add-plain', 'delete-existing', 'modify-plain'] as const);
  const base = build(rng, ctx, rng.pick(bases));
  const mutation = rng.weighted(WILD);
  mutate(rng, ctx, base, mutation);
  base.label += `+wild:${mutation}`;
  return base;
}

function gpaOnGrid(rng: Rng): bigint {
  return rng.chance(0.06) ? rng.pick(HIGH_GPAS) + BigInt(rng.int(4)) * PAGE : BigInt(rng.int(GRID_PAGES)) * PAGE;
}

function npages(rng: Rng): number {
  return rng.chance(0.7) ? 1 + rng.int(4) : 1 + rng.int(16);
}

function validAs(rng: Rng, ctx: GenContext): number {
  return rng.int(ctx.limits.addressSpaces);
}

/** A low id not in use in `asId` (random among the free ones), else any low id. */
function freeLowId(rng: Rng, ctx: GenContext, asId: number): number {
  const free: number[] = [];
  for (let id = 0; id < LOW_IDS; id++) if (ctx.table.get(asId, id) === undefined) free.push(id);
  return free.length > 0 ? rng.pick(free) : rng.int(LOW_IDS);
}

function userAddr(rng: Rng, ctx: GenContext): bigint {
  return ctx.userBase + BigInt(rng.int(48)) * PAGE;
}

/** Anything at all for the guest_memfd field of a plain slot (the kernel ignores it). */
function ignoredFd(rng: Rng, ctx: GenContext): FdChoice | null {
  if (rng.chance(0.8)) return null;
  return rng.pick([...ctx.ownFiles, ...ctx.notGuestMemfd, ...ctx.badFds]);
}

function gmemChoice(rng: Rng, ctx: GenContext): FdChoice {
  const r = rng.int(100);
  if (r < 70) return rng.pick(ctx.ownFiles);
  if (r < 80) return rng.pick(ctx.foreignFiles);
  if (r < 90) return rng.pick(ctx.notGuestMemfd);
  return rng.pick(ctx.badFds);
}

/**
 * A page-aligned offset inside the file, or up to 2 pages past its end; half
 * of the time in the first 8 pages, so file ranges collide often.
 */
function offsetIn(rng: Rng, choice: FdChoice): bigint {
  const filePages = choice.target.kind === 'guest-memfd' ? choice.target.info.size / 4096 : 32;
  return BigInt(rng.int(rng.chance(0.5) ? 8 : filePages + 2)) * PAGE;
}

function op(label: string, asId: number, id: number, fields: Omit<RegionRequest, 'slot' | 'guestMemfd'>, fd: FdChoice | null): GeneratedOp {
  return {
    label,
    request: { slot: asId * 65536 + id, ...fields, guestMemfd: fd?.target ?? null },
    guestMemfdFd: fd?.fd ?? 0,
  };
}

function slotsWhere(ctx: GenContext, pred: (e: SlotEntry) => boolean): SlotEntry[] {
  const out: SlotEntry[] = [];
  for (let as = 0; as < ctx.limits.addressSpaces; as++)
    out.push(
      ...ctx.table
        .gfnIndex(as)
        .entries()
        .map((i) => i.value)
        .filter(pred),
    );
  return out;
}

/** The request that re-sends `e` exactly as the kernel holds it. */
function resend(ctx: GenContext, e: SlotEntry, label: string): GeneratedOp {
  const file = e.gmem === null ? null : (ctx.ownFiles.find((f) => f.target.kind === 'guest-memfd' && f.target.info === e.gmem) ?? null);
  return op(
    label,
    e.asId,
    e.id,
    {
      flags: e.flags,
      gpa: BigInt(e.baseGfn) * PAGE,
      size: BigInt(e.npages) * PAGE,
      userspaceAddr: e.userspaceAddr,
      guestMemfdOffset: BigInt(e.gmemPgoff) * PAGE,
    },
    file,
  );
}

function build(rng: Rng, ctx: GenContext, kind: Exclude<keyof typeof OPS, 'wild'>): GeneratedOp {
  switch (kind) {
    case 'add-plain': {
      const asId = validAs(rng, ctx);
      const flags = rng.pick([0, 0, 0, 0, 0, FLAG_LOG, FLAG_LOG, FLAG_RO, FLAG_LOG | FLAG_RO]);
      const garbageOffset = rng.chance(0.1) ? BigInt(rng.int(0x100000)) : 0n;
      return op(
        'add-plain',
        asId,
        freeLowId(rng, ctx, asId),
        {
          flags,
          gpa: gpaOnGrid(rng),
          size: BigInt(npages(rng)) * PAGE,
          userspaceAddr: userAddr(rng, ctx),
          guestMemfdOffset: garbageOffset,
        },
        ignoredFd(rng, ctx),
      );
    }
    case 'add-gmem': {
      const asId = validAs(rng, ctx);
      const fd = gmemChoice(rng, ctx);
      return op(
        'add-gmem',
        asId,
        freeLowId(rng, ctx, asId),
        {
          flags: FLAG_GMEM,
          gpa: gpaOnGrid(rng),
          size: BigInt(rng.chance(0.8) ? 1 + rng.int(8) : npages(rng)) * PAGE,
          userspaceAddr: rng.chance(0.6) ? 0n : userAddr(rng, ctx),
          guestMemfdOffset: offsetIn(rng, fd),
        },
        fd,
      );
    }
    case 'delete-existing': {
      const all = slotsWhere(ctx, () => true);
      if (all.length === 0) return build(rng, ctx, 'delete-missing');
      const e = rng.pick(all);
      return op(
        'delete-existing',
        e.asId,
        e.id,
        {
          flags: rng.chance(0.5) ? 0 : e.flags,
          gpa: rng.chance(0.5) ? BigInt(e.baseGfn) * PAGE : gpaOnGrid(rng),
          size: 0n,
          userspaceAddr: rng.chance(0.5) ? 0n : e.userspaceAddr,
          guestMemfdOffset: 0n,
        },
        ignoredFd(rng, ctx),
      );
    }
    case 'delete-missing': {
      const asId = validAs(rng, ctx);
      const missing: number[] = [];
      for (let id = 0; id < LOW_IDS; id++) if (ctx.table.get(asId, id) === undefined) missing.push(id);
      const id = missing.length > 0 ? rng.pick(missing) : LOW_IDS + rng.int(16);
      return op('delete-missing', asId, id, { flags: 0, gpa: gpaOnGrid(rng), size: 0n, userspaceAddr: 0n, guestMemfdOffset: 0n }, null);
    }
    case 'modify-plain': {
      const plain = slotsWhere(ctx, (e) => e.gmem === null);
      if (plain.length === 0) return build(rng, ctx, 'add-plain');
      const e = rng.pick(plain);
      const how = rng.weighted({
        move: 34,
        'toggle-log': 20,
        'move+toggle-log': 8,
        same: 8,
        'toggle-readonly': 7,
        resize: 7,
        'new-uaddr': 7,
        'add-gmem-flag': 9,
      });
      const o = resend(ctx, e, `modify-plain/${how}`);
      const r = o.request;
      if (how === 'move' || how === 'move+toggle-log') r.gpa = gpaOnGrid(rng);
      if (how === 'toggle-log' || how === 'move+toggle-log') r.flags ^= FLAG_LOG;
      if (how === 'toggle-readonly') r.flags ^= FLAG_RO;
      if (how === 'resize') r.size = BigInt(e.npages + 1 + rng.int(4)) * PAGE;
      if (how === 'new-uaddr') r.userspaceAddr = e.userspaceAddr + PAGE * BigInt(1 + rng.int(8));
      if (how === 'add-gmem-flag') {
        // Keep only flags that may go with GUEST_MEMFD, so the change rule is what decides.
        r.flags = (r.flags & ~(FLAG_LOG | FLAG_RO)) | FLAG_GMEM;
        const fd = rng.pick(ctx.ownFiles);
        r.guestMemfd = fd.target;
        o.guestMemfdFd = fd.fd;
      }
      return o;
    }
    case 'modify-gmem': {
      const gmem = slotsWhere(ctx, (e) => e.gmem !== null);
      if (gmem.length === 0) return build(rng, ctx, 'add-gmem');
      const e = rng.pick(gmem);
      const how = rng.weighted({ same: 30, move: 30, 'drop-gmem-flag': 20, 'new-offset': 10, 'add-log': 10 });
      const o = resend(ctx, e, `modify-gmem/${how}`);
      const r = o.request;
      if (how === 'move') r.gpa = gpaOnGrid(rng);
      if (how === 'drop-gmem-flag') r.flags = 0;
      if (how === 'new-offset') r.guestMemfdOffset += PAGE * BigInt(1 + rng.int(4));
      if (how === 'add-log') r.flags |= FLAG_LOG;
      return o;
    }
  }
}

function mutate(rng: Rng, ctx: GenContext, o: GeneratedOp, how: keyof typeof WILD): void {
  const r = o.request;
  const asId = r.slot >>> 16;
  const id = r.slot & 0xffff;
  const nr = ctx.limits.nrMemslots;
  const odd = (): bigint => BigInt(1 + rng.int(4095));
  switch (how) {
    case 'unaligned-gpa':
      r.gpa += rng.chance(0.5) ? 0x800n : odd();
      break;
    case 'unaligned-size':
      r.size += rng.chance(0.5) ? 0x800n : odd();
      break;
    case 'unaligned-uaddr':
      r.userspaceAddr += odd();
      break;
    // Only breaks a rule when the request has KVM_MEM_GUEST_MEMFD; otherwise ignored.
    case 'unaligned-offset':
      r.guestMemfdOffset += odd();
      break;
    case 'unknown-flag':
      r.flags = (r.flags | rng.pick([1 << 3, 1 << 4, 0x80000000])) >>> 0;
      break;
    case 'readonly+gmem':
      r.flags = FLAG_RO | FLAG_GMEM;
      break;
    case 'log+gmem':
      r.flags = FLAG_LOG | FLAG_GMEM;
      break;
    case 'high-slot-id': {
      // nr-1 and nr-2 are valid ids far from the low ones; the rest are past the end.
      const hi = rng.pick([nr - 1, nr - 2, nr - 1, nr, nr + 1, 32767, 0xffff]);
      r.slot = asId * 65536 + hi;
      break;
    }
    case 'bad-address-space':
      r.slot = rng.pick([ctx.limits.addressSpaces, ctx.limits.addressSpaces + 1, 0x7fff]) * 65536 + id;
      break;
    case 'gpa-wrap': {
      // gpa + size really passes 2^64 (a gpa near 2^64 that does not wrap is
      // outside the model's domain: the kernel refuses it for the max gfn).
      const k = BigInt(1 + rng.int(8));
      r.gpa = U64_END - k * PAGE;
      if (r.size <= k * PAGE) r.size = (k + BigInt(1 + rng.int(8))) * PAGE;
      break;
    }
    case 'offset-wrap': {
      const k = BigInt(1 + rng.int(8));
      r.flags = FLAG_GMEM;
      r.guestMemfdOffset = U64_END - k * PAGE;
      if (r.size <= k * PAGE) r.size = (k + BigInt(1 + rng.int(8))) * PAGE;
      if (r.guestMemfd === null) {
        const fd = rng.pick(ctx.ownFiles);
        r.guestMemfd = fd.target;
        o.guestMemfdFd = fd.fd;
      }
      break;
    }
    case 'offset-negative':
      // Does not wrap, but is negative as a loff_t: kvm_gmem_bind refuses it.
      r.guestMemfdOffset = (1n << 63n) + BigInt(rng.int(16)) * PAGE;
      break;
    case 'uaddr-limit': {
      // Exactly at TASK_SIZE_MAX (allowed), one or two pages past it, or wrapping.
      const size = r.size === 0n ? 0n : r.size;
      const which = rng.int(4);
      if (which === 0) r.userspaceAddr = ctx.limits.taskSizeMax - size;
      else if (which === 3) r.userspaceAddr = U64_END - PAGE;
      else r.userspaceAddr = ctx.limits.taskSizeMax - size + BigInt(which) * PAGE;
      break;
    }
    case 'too-large':
      // 2^31 pages: one more than KVM_MEM_MAX_NR_PAGES (at a low userspace_addr,
      // so the user address range still fits).
      r.size = 1n << 43n;
      r.userspaceAddr = 0n;
      break;
  }
}
