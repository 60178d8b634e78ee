// Differential test of the memslot model: thousands of random
// KVM_SET_USER_MEMORY_REGION2 requests are judged by lib/rules/memslot.ts
// and sent, unchecked, to the real kernel (raw.setUserMemoryRegion2). The
// model's verdict (accepted, or the rule's kernelErrno) must equal the
// kernel's on every request, and the model's table must equal the kernel's.
// The kernel cannot read its memslots back, so the tables are compared by
// probing: every slot the model holds must collide with a 1-page slot at its
// first gfn (EEXIST), every gap must take one, and at the end every slot the
// model holds must delete and nothing else may.
//
// KVM_GMEM_DIFF_SEED=<u32> replays a run; the seed is printed either way.
import { randomInt } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { constants } from 'node:os';
import { describe, expect } from 'vitest';
import { Kvm, KvmError, KvmRuleError, Mapping, raw, type GuestMemfd, type Vm, type VmTypeName } from '../lib/index.js';
import { errnoName } from '../lib/errors.js';
import { apply, type Change, judge, type MemslotLimits, type RegionRequest } from '../lib/rules/memslot.js';
import { MemslotTable } from '../lib/model/memslot-table.js';
import { guestMemfdInfo } from '../lib/kvm/guest-memfd.js';
import { vmMemslotLimits } from '../lib/kvm/vm.js';
import { type FdChoice, type GenContext, generateOp, LOW_IDS, Rng } from './differential/ops.js';
import { gate, needs } from './helpers.js';

const OPERATIONS = 3000;
const CHECKPOINT_EVERY = 500;
// About 1 s here; inside the test VM (QEMU TCG, nested KVM) one run took 10-70 s.
const TIMEOUT_MS = process.env.TESTVM === '1' ? 900_000 : 60_000;
const PAGE = 4096n;
const { EEXIST, EINVAL } = constants.errno;

function seedFromEnv(): number {
  const s = process.env.KVM_GMEM_DIFF_SEED;
  if (s === undefined || s === '') return randomInt(2 ** 32 - 1);
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`KVM_GMEM_DIFF_SEED must be a u32, got '${s}'`);
  return n;
}

/** The model's answer: the change, or the rule broken and the errno it stands for. */
type Verdict = { accepted: true; change: Change } | { accepted: false; errno: number; rule: string; message: string };

function modelVerdict(limits: MemslotLimits, table: MemslotTable, r: RegionRequest): Verdict {
  try {
    return { accepted: true, change: judge(limits, table, r) };
  } catch (e) {
    if (e instanceof KvmRuleError) return { accepted: false, errno: e.kernelErrno, rule: e.rule, message: e.message };
    // A crash in the model is a disagreement too (errno -1 matches nothing).
    return { accepted: false, errno: -1, rule: 'model-threw', message: String(e) };
  }
}

/** Sends one region to the kernel; null on success, else the errno. */
function send(
  vm: Vm,
  slot: number,
  flags: number,
  gpa: bigint,
  size: bigint,
  userspaceAddr: bigint,
  guestMemfdOffset: bigint,
  guestMemfd: number,
): number | null {
  try {
    // Before 6.8 only v1 exists (and so the model refuses guest_memfd flags).
    if (vm.capabilities().userMemory2)
      raw.setUserMemoryRegion2(vm.fd, { slot, flags, guestPhysAddr: gpa, memorySize: size, userspaceAddr, guestMemfdOffset, guestMemfd });
    else raw.setUserMemoryRegion(vm.fd, { slot, flags, guestPhysAddr: gpa, memorySize: size, userspaceAddr });
    return null;
  } catch (e) {
    if (e instanceof KvmError) return e.errno;
    throw e;
  }
}

function showVerdict(v: Verdict | number | null): string {
  if (v === null) return 'accepted';
  if (typeof v === 'number') return errnoName(v);
  // The message starts with the rule id in brackets.
  return v.accepted ? `accepted (${v.change.kind})` : `${errnoName(v.errno)} ${v.message}`;
}

function showRequest(r: RegionRequest, fd: number): string {
  const h = (v: bigint | number): string => '0x' + v.toString(16);
  const t = r.guestMemfd === null ? 'null' : r.guestMemfd.kind === 'guest-memfd' ? r.guestMemfd.info.label : `${r.guestMemfd.kind} ${r.guestMemfd.fd}`;
  return (
    `slot=${r.slot >>> 16}:${r.slot & 0xffff} flags=${h(r.flags)} gpa=${h(r.gpa)} size=${h(r.size)} uaddr=${h(r.userspaceAddr)} ` +
    `gmem_offset=${h(r.guestMemfdOffset)} guest_memfd=${fd} (${t})`
  );
}

function verdictKey(v: Verdict): string {
  if (!v.accepted) return `rejected ${v.rule} ${errnoName(v.errno)}`;
  if (v.change.kind === 'create') return `accepted create (${v.change.entry.gmem === null ? 'plain' : 'guest_memfd'})`;
  return `accepted ${v.change.kind}`;
}

/**
 * Compares the model's table with the kernel's by probing with 1-page slots
 * under an id the model says is free: each slot's first gfn must give EEXIST,
 * each gap must take a slot (deleted again at once). With guest_memfd, the
 * same for each file's bound and unbound pages. Returns the mismatches.
 */
function probeTables(vm: Vm, limits: MemslotLimits, table: MemslotTable, ctx: GenContext, userBase: bigint): string[] {
  const bad: string[] = [];
  for (let as = 0; as < limits.addressSpaces; as++) {
    const probeId = table.freeId(as, limits.nrMemslots);
    const slot = as * 65536 + probeId;
    const slots = table.gfnIndex(as).entries();
    let cursor = 0;
    const gaps: number[] = [];
    for (const s of slots) {
      const err = send(vm, slot, 0, BigInt(s.start) * PAGE, PAGE, userBase, 0n, 0);
      if (err !== EEXIST) {
        bad.push(
          `as ${as}: memslot ${s.value.id} at gfn 0x${s.start.toString(16)} is in the model, but a 1-page slot there gave ${showVerdict(err)}, not EEXIST`,
        );
        if (err === null) send(vm, slot, 0, 0n, 0n, 0n, 0n, 0);
      }
      if (s.start > cursor) gaps.push(cursor);
      cursor = s.end;
    }
    gaps.push(cursor);
    for (const gfn of gaps) {
      const err = send(vm, slot, 0, BigInt(gfn) * PAGE, PAGE, userBase, 0n, 0);
      if (err !== null) bad.push(`as ${as}: gfn 0x${gfn.toString(16)} is free in the model, but a 1-page slot there gave ${showVerdict(err)}`);
      else if (send(vm, slot, 0, 0n, 0n, 0n, 0n, 0) !== null) bad.push(`as ${as}: could not delete probe slot ${probeId}`);
    }
  }
  if (!limits.guestMemfd) return bad;
  // File side of the 1:1 rule: a 1-page guest_memfd slot above every memslot.
  const probeId = table.freeId(0, limits.nrMemslots);
  const freeGfn = table
    .gfnIndex(0)
    .entries()
    .reduce((m, s) => Math.max(m, s.end), 0);
  for (const f of ctx.ownFiles) {
    if (f.target.kind !== 'guest-memfd') continue;
    const g = f.target.info;
    const bound = g.bindings.entries();
    let cursor = 0;
    const gaps: number[] = [];
    for (const b of bound) {
      const err = send(vm, probeId, 4, BigInt(freeGfn) * PAGE, PAGE, 0n, BigInt(b.start) * PAGE, f.fd);
      if (err !== limits.bindingOverlapErrno) {
        bad.push(
          `${g.label}: page 0x${b.start.toString(16)} is bound in the model, but binding it again gave ${showVerdict(err)}, not ${errnoName(limits.bindingOverlapErrno)}`,
        );
        if (err === null) send(vm, probeId, 0, 0n, 0n, 0n, 0n, 0);
      }
      if (b.start > cursor) gaps.push(cursor);
      cursor = b.end;
    }
    if (cursor < g.size / 4096) gaps.push(cursor);
    for (const page of gaps) {
      const err = send(vm, probeId, 4, BigInt(freeGfn) * PAGE, PAGE, 0n, BigInt(page) * PAGE, f.fd);
      if (err !== null) bad.push(`${g.label}: page 0x${page.toString(16)} is unbound in the model, but binding it gave ${showVerdict(err)}`);
      else if (send(vm, probeId, 0, 0n, 0n, 0n, 0n, 0) !== null) bad.push(`${g.label}: could not delete probe slot ${probeId}`);
    }
  }
  return bad;
}

interface Disagreement {
  index: number;
  label: string;
  request: string;
  model: string;
  kernel: string;
}

function runDifferential(type: VmTypeName): void {
  const seed = seedFromEnv();
  console.log(`memslot differential on a '${type}' VM: starting with seed ${seed}`);
  const rng = new Rng(seed);
  using kvm = Kvm.open();
  using vm = kvm.createVm({ type });
  using otherVm = kvm.createVm({ type });
  using userMemory = Mapping.anonymousShared(64 * 4096);
  // The VM's own limits: the binding-overlap errno is the running kernel's
  // (probed once on a scratch VM), as Vm.addMemslot() judges with.
  const limits: MemslotLimits = vmMemslotLimits(vm);
  // Files without create flags: sw-protected VMs offer none.
  // Without KVM_CREATE_GUEST_MEMFD (6.1) there are no files: guest_memfd
  // requests then name other fds, and both sides refuse their flag first.
  const hasGmem = kvm.checkExtension('GUEST_MEMFD') > 0;
  const files: GuestMemfd[] = hasGmem ? [8, 32, 128].map((pages) => vm.createGuestMemfd({ size: pages * 4096 })) : [];
  const foreign = hasGmem ? otherVm.createGuestMemfd({ size: 64 * 4096 }) : null;
  const devNull = openSync('/dev/null', 'r');
  try {
    const asChoice = (g: GuestMemfd): FdChoice => ({ target: { kind: 'guest-memfd', info: guestMemfdInfo(g) }, fd: g.fd });
    const table = new MemslotTable();
    const notGuestMemfd: FdChoice[] = [
      { target: { kind: 'not-guest-memfd', fd: vm.fd }, fd: vm.fd },
      { target: { kind: 'not-guest-memfd', fd: devNull }, fd: devNull },
    ];
    const ctx: GenContext = {
      limits,
      table,
      ownFiles: hasGmem ? files.map(asChoice) : notGuestMemfd,
      foreignFiles: foreign !== null ? [asChoice(foreign)] : notGuestMemfd,
      notGuestMemfd,
      badFds: [
        { target: { kind: 'bad-fd', fd: 100000 }, fd: 100000 },
        { target: { kind: 'bad-fd', fd: 0xffffffff }, fd: 0xffffffff },
      ],
      userBase: userMemory.address,
    };

    const counts = new Map<string, number>();
    const disagreements: Disagreement[] = [];
    const tableMismatches: string[] = [];
    const idsUsed = new Set<number>();
    let checkpoints = 0;

    for (let i = 0; i < OPERATIONS; i++) {
      const { label, request: r, guestMemfdFd } = generateOp(rng, ctx);
      if ((r.slot & 0xffff) < limits.nrMemslots) idsUsed.add(r.slot & 0xffff);
      const model = modelVerdict(limits, table, r);
      const kernel = send(vm, r.slot, r.flags, r.gpa, r.size, r.userspaceAddr, r.guestMemfdOffset, guestMemfdFd);
      const agree = model.accepted ? kernel === null : kernel === model.errno;
      counts.set(verdictKey(model), (counts.get(verdictKey(model)) ?? 0) + 1);
      if (!agree) {
        disagreements.push({ index: i, label, request: showRequest(r, guestMemfdFd), model: showVerdict(model), kernel: showVerdict(kernel) });
        // Keep the kernel in the model's state so one disagreement does not
        // cascade: undo what the kernel did and the model did not expect.
        if (kernel === null && !model.accepted) {
          const old = table.get(r.slot >>> 16, r.slot & 0xffff);
          const restored =
            old !== undefined &&
            send(vm, r.slot, old.flags, BigInt(old.baseGfn) * PAGE, BigInt(old.npages) * PAGE, old.userspaceAddr, BigInt(old.gmemPgoff) * PAGE, 0) === null;
          if (!restored) {
            send(vm, r.slot, 0, 0n, 0n, 0n, 0n, 0);
            if (old !== undefined) apply(table, { kind: 'delete', old });
          }
        }
      } else if (model.accepted) {
        apply(table, model.change);
      }
      if ((i + 1) % CHECKPOINT_EVERY === 0) {
        checkpoints++;
        tableMismatches.push(...probeTables(vm, limits, table, ctx, userMemory.address).map((m) => `after op ${i + 1}: ${m}`));
      }
    }

    // Final comparison: every slot the model holds deletes, and then nothing
    // is left in the kernel under any id the run used.
    const finalSlots = table.entries();
    for (const e of finalSlots) {
      const err = send(vm, e.asId * 65536 + e.id, 0, 0n, 0n, 0n, 0n, 0);
      if (err !== null) tableMismatches.push(`end: deleting memslot ${e.asId}:${e.id} (in the model) gave ${errnoName(err)}`);
      apply(table, { kind: 'delete', old: e });
    }
    for (let as = 0; as < limits.addressSpaces; as++) {
      for (const id of new Set([...Array.from({ length: LOW_IDS }, (_, k) => k), ...idsUsed])) {
        const err = send(vm, as * 65536 + id, 0, 0n, 0n, 0n, 0n, 0);
        if (err !== EINVAL) tableMismatches.push(`end: memslot ${as}:${id} was still in the kernel (delete gave ${showVerdict(err)}) but not in the model`);
      }
    }

    const lines = [
      `memslot differential on a '${type}' VM: seed ${seed} (KVM_GMEM_DIFF_SEED=${seed} replays the run)`,
      `  limits: nrMemslots=${limits.nrMemslots} addressSpaces=${limits.addressSpaces} guestMemfd=${limits.guestMemfd} readonlyMem=${limits.readonlyMem} taskSizeMax=0x${limits.taskSizeMax.toString(16)}`,
      `  operations: ${OPERATIONS}, disagreements: ${disagreements.length}, table checkpoints: ${checkpoints} (+ final), table mismatches: ${tableMismatches.length}, slots at end: ${finalSlots.length}`,
      ...[...counts].sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `  ${String(n).padStart(5)}  ${k}`),
    ];
    console.log(lines.join('\n'));

    const report = disagreements
      .slice(0, 20)
      .map((d) => `#${d.index} ${d.label}\n    request: ${d.request}\n    model:   ${d.model}\n    kernel:  ${d.kernel}`);
    expect.soft(disagreements.length, `seed ${seed}: ${disagreements.length} disagreements, first 20:\n${report.join('\n')}`).toBe(0);
    expect.soft(tableMismatches, `seed ${seed}: the model's table differs from the kernel's`).toEqual([]);

    // The run must not degenerate: every major verdict occurred a handful of times.
    const n = (k: string): number => counts.get(k) ?? 0;
    const must = [
      'accepted create (plain)',
      'accepted delete',
      'accepted move',
      'accepted flags',
      'accepted none',
      'rejected memslot-gfn-overlap EEXIST',
      'rejected page-alignment EINVAL',
      'rejected memslot-flags EINVAL',
      'rejected slot-id-out-of-range EINVAL',
      'rejected address-space-out-of-range EINVAL',
      'rejected range-wraps EINVAL',
      'rejected memslot-not-found EINVAL',
      'rejected memslot-modify EINVAL',
      'rejected userspace-address-range EINVAL',
      'rejected memslot-too-large EINVAL',
    ];
    if (limits.guestMemfd) {
      must.push(
        'accepted create (guest_memfd)',
        'rejected guest-memfd-memslot-immutable EINVAL',
        'rejected guest-memfd-bad-fd EBADF',
        'rejected not-a-guest-memfd EINVAL',
        'rejected guest-memfd-of-another-vm EINVAL',
        'rejected guest-memfd-range EINVAL',
        `rejected guest-memfd-binding-overlap ${errnoName(limits.bindingOverlapErrno)}`,
      );
    }
    for (const k of must) expect(n(k), `verdict '${k}' occurred ${n(k)} times`).toBeGreaterThanOrEqual(5);
  } finally {
    closeSync(devNull);
  }
}

describe('KVM_SET_USER_MEMORY_REGION2: model and kernel agree', () => {
  for (const type of ['default', 'sw-protected'] as const) {
    gate(needs.vmType(type)).test(`${OPERATIONS} random requests on a '${type}' VM`, () => runDifferential(type), TIMEOUT_MS);
  }
});
