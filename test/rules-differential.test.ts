// Differential test of the guest_memfd and memory-attribute rules: random
// KVM_CREATE_GUEST_MEMFD, fallocate and KVM_SET_MEMORY_ATTRIBUTES requests
// are judged by lib/rules/guest-memfd.ts and lib/rules/attributes.ts (the
// judges Vm and GuestMemfd call) and sent, unchecked, to the real kernel
// through the raw layer. The model's verdict (accepted, or the rule's
// kernelErrno; a missing capability stands for ENOTTY) must equal the
// kernel's on every request. (Memslots have their own, stateful run in
// memslot-differential.test.ts.)
//
// Requests come from a valid base bent, most of the time, by one mutation
// that breaks one rule, so every rule is met often; accepted ranges stay
// small (attributes reserve xarray entries per page, fallocate allocates).
// KVM_GMEM_DIFF_SEED=<u32> replays a run; the seed is printed either way.
import { randomInt } from 'node:crypto';
import { constants } from 'node:os';
import { describe, expect } from 'vitest';
import { Cap, Kvm, KvmError, KvmRuleError, MemoryAttribute, MissingCapabilityError, raw, type VmTypeName } from '../lib/index.js';
import { type GuestMemfdCreateLimits, judgeCreate, judgeFallocate } from '../lib/rules/guest-memfd.js';
import { type AttributeLimits, judgeAttributes } from '../lib/rules/attributes.js';
import { Rng } from './differential/ops.js';
import { gate, needs } from './helpers.js';
import { Falloc } from '../lib/binding/uapi.js';

const OPERATIONS = 3000;
const TIMEOUT_MS = process.env.TESTVM === '1' ? 600_000 : 60_000;
const ENOTTY = constants.errno.ENOTTY;
const errnoNames = new Map(Object.entries(constants.errno).map(([k, v]) => [v, k]));
const errnoName = (n: number): string => errnoNames.get(n) ?? `errno ${n}`;
const PAGE = 4096n;

function seedFromEnv(): number {
  const s = process.env.KVM_GMEM_DIFF_SEED;
  if (s === undefined || s === '') return randomInt(2 ** 32 - 1);
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`KVM_GMEM_DIFF_SEED must be a u32, got '${s}'`);
  return n;
}

/** null: accepted; else the errno, and the rule that predicted it. */
interface Verdict {
  errno: number | null;
  rule: string;
}

function model(f: () => void): Verdict {
  try {
    f();
    return { errno: null, rule: 'accepted' };
  } catch (e) {
    if (e instanceof KvmRuleError) return { errno: e.kernelErrno, rule: e.rule };
    if (e instanceof MissingCapabilityError) return { errno: ENOTTY, rule: `missing ${e.capability}` };
    // A crash in the model is a disagreement too (errno -1 matches nothing).
    return { errno: -1, rule: `model threw ${String(e)}` };
  }
}

function kernel(f: () => void): number | null {
  for (;;) {
    try {
      f();
      return null;
    } catch (e) {
      if (!(e instanceof KvmError)) throw e;
      // fallocate stops with EINTR when a signal is pending: the package repeats it, so does the test.
      if (e.code !== 'EINTR') return e.errno;
    }
  }
}

const show = (n: number | null): string => (n === null ? 'accepted' : errnoName(n));
const h = (v: bigint | number): string => '0x' + v.toString(16);

interface Tally {
  counts: Map<string, number>;
  disagreements: string[];
}

function record(t: Tally, i: number, what: string, m: Verdict, k: number | null): void {
  const key = m.errno === null ? 'accepted' : `${m.rule} ${errnoName(m.errno)}`;
  t.counts.set(key, (t.counts.get(key) ?? 0) + 1);
  if (m.errno !== k)
    t.disagreements.push(`#${i} ${what}\n    model:  ${m.errno === null ? 'accepted' : `${show(m.errno)} [${m.rule}]`}\n    kernel: ${show(k)}`);
}

function report(label: string, seed: number, t: Tally, must: string[]): void {
  console.log(
    [
      `${label}: seed ${seed} (KVM_GMEM_DIFF_SEED=${seed} replays it), ${OPERATIONS} requests, ${t.disagreements.length} disagreements`,
      ...[...t.counts].sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `  ${String(n).padStart(5)}  ${k}`),
    ].join('\n'),
  );
  expect.soft(t.disagreements.length, `seed ${seed}: first 20 disagreements:\n${t.disagreements.slice(0, 20).join('\n')}`).toBe(0);
  // The run must not degenerate: every verdict that can occur here occurred.
  for (const k of must) expect(t.counts.get(k) ?? 0, `verdict '${k}' occurred ${t.counts.get(k) ?? 0} times`).toBeGreaterThanOrEqual(5);
}

function createRun(type: VmTypeName): void {
  const seed = seedFromEnv();
  const rng = new Rng(seed);
  using kvm = Kvm.open();
  using vm = kvm.createVm({ type });
  const limits: GuestMemfdCreateLimits = {
    ioctl: kvm.checkExtension(Cap.GUEST_MEMFD) > 0,
    supportedFlags: vm.capabilities().guestMemfdFlagBits,
    vmType: type,
  };
  const t: Tally = { counts: new Map(), disagreements: [] };
  const known = [1, 2, 4, 8, 1 << 31];
  // Every bit of the u64 field alone first, then random requests.
  for (let bit = 0n; bit < 64n; bit++) {
    const size = 2n * PAGE;
    const flags = 1n << bit;
    record(
      t,
      -1,
      `create size=${h(size)} flags=${h(flags)}`,
      model(() => judgeCreate(limits, { size, flags })),
      kernel(() => raw.createGuestMemfd(vm, { size, flags }).close()),
    );
  }
  for (let i = 0; i < OPERATIONS; i++) {
    let size = BigInt(1 + rng.int(64)) * PAGE;
    let flags: number | bigint = rng.chance(0.5) ? 0 : limits.supportedFlags & rng.int(4);
    switch (rng.int(6)) {
      case 0:
        size = rng.pick([0n, 1n, 0xfffn, PAGE + 1n, size - 1n, size + 0x800n]);
        break;
      case 1:
        size = rng.pick([1n << 63n, (1n << 64n) - PAGE, (1n << 63n) + PAGE]);
        break;
      case 2:
        // Any one of the field's 64 bits, or a known one, alone or with the offered ones.
        flags = rng.chance(0.5) ? 1n << BigInt(rng.int(64)) : BigInt(rng.pick(known) >>> 0);
        if (rng.chance(0.5)) flags |= BigInt(limits.supportedFlags);
        break;
      case 3:
        size = rng.pick([1n << 40n, 1n << 62n, (1n << 63n) - PAGE]);
        break; // large files cost nothing until allocated
      default:
        break;
    }
    const m = model(() => judgeCreate(limits, { size, flags }));
    const k = kernel(() => raw.createGuestMemfd(vm, { size, flags }).close());
    record(t, i, `create size=${h(size)} flags=${h(flags)}`, m, k);
  }
  const must = limits.ioctl
    ? ['accepted', 'guest-memfd-size EINVAL', 'page-alignment EINVAL', 'guest-memfd-flags EINVAL']
    : ['missing KVM_CAP_GUEST_MEMFD ENOTTY'];
  report(`KVM_CREATE_GUEST_MEMFD on a '${type}' VM (KVM_CAP_GUEST_MEMFD_FLAGS ${h(limits.supportedFlags)})`, seed, t, must);
}

function fallocateRun(type: VmTypeName): void {
  const seed = seedFromEnv();
  const rng = new Rng(seed);
  using kvm = Kvm.open();
  using vm = kvm.createVm({ type });
  const pages = 64;
  using g = vm.createGuestMemfd({ size: pages * 4096 });
  const file = { size: g.size, label: g.label };
  const t: Tally = { counts: new Map(), disagreements: [] };
  const allocate = Falloc.KEEP_SIZE;
  const punch = Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE;
  for (let i = 0; i < OPERATIONS; i++) {
    let mode = rng.chance(0.5) ? allocate : punch;
    const start = rng.int(pages);
    let offset = BigInt(start) * PAGE;
    let length = BigInt(1 + rng.int(pages - start)) * PAGE;
    switch (rng.int(7)) {
      case 0:
        offset += rng.pick([1n, 0x800n, 0xfffn]);
        break;
      case 1:
        length = rng.pick([0n, 1n, length + 0x800n, length - 1n]);
        break;
      case 2:
        length += BigInt(pages) * PAGE;
        break; // past the end: allocate refuses, punch takes it
      case 3:
        [offset, length] = rng.pick([
          [1n << 63n, PAGE],
          [0n, 1n << 63n],
          [(1n << 63n) - PAGE, 2n * PAGE],
          [1n << 62n, 1n << 62n],
          [1n << 40n, PAGE],
        ]);
        break;
      case 4:
        mode = rng.pick([0, Falloc.PUNCH_HOLE, Falloc.ZERO_RANGE | Falloc.KEEP_SIZE, Falloc.COLLAPSE_RANGE, 0x100 | Falloc.KEEP_SIZE, 0x80 | punch]);
        break;
      default:
        break;
    }
    const m = model(() => judgeFallocate(file, { mode, offset, length }));
    const k = kernel(() => raw.fallocate(g, mode, offset, length));
    record(t, i, `fallocate mode=${h(mode)} offset=${h(offset)} length=${h(length)} on ${pages} pages`, m, k);
  }
  report(`fallocate on a guest_memfd of a '${type}' VM`, seed, t, [
    'accepted',
    'page-alignment EINVAL',
    'guest-memfd-range EINVAL',
    'guest-memfd-range EFBIG',
    'fallocate-mode EOPNOTSUPP',
  ]);
}

function attributesRun(type: VmTypeName): void {
  const seed = seedFromEnv();
  const rng = new Rng(seed);
  using kvm = Kvm.open();
  using vm = kvm.createVm({ type });
  const limits: AttributeLimits = {
    ioctl: kvm.checkExtension(Cap.MEMORY_ATTRIBUTES) !== 0,
    supported: vm.capabilities().memoryAttributes.bits,
    vmType: type,
  };
  const t: Tally = { counts: new Map(), disagreements: [] };
  const PRIVATE = BigInt(MemoryAttribute.PRIVATE);
  for (let i = 0; i < OPERATIONS; i++) {
    let gpa = BigInt(rng.int(1 << 20)) * PAGE;
    let size = BigInt(1 + rng.int(64)) * PAGE;
    let attributes = rng.chance(0.5) ? 0n : BigInt(limits.supported) & PRIVATE;
    let flags = 0n;
    switch (rng.int(7)) {
      case 0:
        gpa += rng.pick([1n, 0x800n]);
        break;
      case 1:
        size = rng.pick([0n, 1n, size + 0x800n]);
        break;
      case 2:
        [gpa, size] = rng.pick([
          [(1n << 64n) - PAGE, 2n * PAGE],
          [(1n << 64n) - PAGE, PAGE],
          [1n << 63n, 1n << 63n],
        ]);
        break;
      case 3:
        attributes = rng.pick([PRIVATE, 1n, 2n, 4n, 0x10n, 1n << 63n]);
        break;
      case 4:
        flags = rng.pick([1n, 1n << 63n]);
        break;
      default:
        break;
    }
    const req = { gpa, size, attributes, flags };
    const m = model(() => judgeAttributes(limits, req));
    const k = kernel(() => raw.setMemoryAttributes(vm, { address: gpa, size, attributes, flags }));
    record(t, i, `set attributes gpa=${h(gpa)} size=${h(size)} attributes=${h(attributes)} flags=${h(flags)}`, m, k);
  }
  const must = !limits.ioctl
    ? ['missing KVM_CAP_MEMORY_ATTRIBUTES ENOTTY']
    : [
        'accepted',
        'attribute-flags EINVAL',
        'memory-attributes-unsupported EINVAL',
        'attribute-range-empty EINVAL',
        'page-alignment EINVAL',
        'range-wraps EINVAL',
      ];
  report(`KVM_SET_MEMORY_ATTRIBUTES on a '${type}' VM (KVM_CAP_MEMORY_ATTRIBUTES ${h(limits.supported)} on the VM)`, seed, t, must);
}

describe('guest_memfd and attribute rules: model and kernel agree', () => {
  for (const type of ['default', 'sw-protected'] as const) {
    const offered = needs.vmType(type);
    gate(offered).test(`${OPERATIONS} random KVM_CREATE_GUEST_MEMFD requests on a '${type}' VM`, () => createRun(type), TIMEOUT_MS);
    gate(offered, needs.cap('GUEST_MEMFD')).test(
      `${OPERATIONS} random fallocate requests on a guest_memfd of a '${type}' VM`,
      () => fallocateRun(type),
      TIMEOUT_MS,
    );
    gate(offered).test(`${OPERATIONS} random KVM_SET_MEMORY_ATTRIBUTES requests on a '${type}' VM`, () => attributesRun(type), TIMEOUT_MS);
  }
});
