// What the fuzz child checks after each call, with no trust in the package's
// own bookkeeping:
//   - classify(): the error that came out is one of the documented classes
//     (docs/rules.md "Errors", docs/api.md), with the string `code` its class has;
//   - probeVm(): the package's memslot table (vm.memslots()) equals the
//     kernel's. KVM cannot list memslots, so the kernel is probed through the
//     raw layer, as test/memslot-differential.test.ts does: every slot the
//     package holds must collide with a new 1-page slot (EEXIST) at its first
//     and last gfn and must answer a re-send of itself as "nothing to change";
//     every id the package says is free must refuse a delete (EINVAL); every
//     gap must take a 1-page slot; and (full probes) every guest_memfd page
//     the package says is bound must refuse a second binding;
//   - snapshot()/diffSnapshots(): fds (number -> target) and MAP_SHARED
//     mappings, for the leak check against the child's baseline;
//   - cloexecViolations(): every KVM fd of the process has FD_CLOEXEC (read
//     from /proc/self/fdinfo, not through the package).
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { release } from 'node:os';
import * as lib from '../../lib/index.js';
import { ClosedError, KvmError, type Memslot, raw, type Vm } from '../../lib/index.js';
import { errnoName } from '../../lib/errors.js';
import { bindingOverlapErrnoOfRelease } from '../../lib/kvm/kernel-behaviour.js';
import { HazardSentinel } from './hazards.js';

// ---- error classes -----------------------------------------------------------

export interface Verdict {
  documented: boolean;
  /** The class name as the check saw it (constructor name for undocumented ones). */
  cls: string;
  code?: string;
  /** Why it is not documented, or what was wrong with a documented class. */
  why?: string;
  message?: string;
}

// VcpuBusyError is being added while this harness is written: use the class
// when the build exports it, else recognise it by its code.
const VcpuBusyError = (lib as Record<string, unknown>).VcpuBusyError as (abstract new (...a: never[]) => Error) | undefined;
const BUSY_CODE = 'ERR_KVM_VCPU_BUSY';

/** Documented classes with a fixed `code`, most specific first. */
const CODED: [string, abstract new (...a: never[]) => Error, string][] = [
  ['MissingCapabilityError', lib.MissingCapabilityError, 'ERR_KVM_MISSING_CAPABILITY'],
  ['ClosedError', lib.ClosedError, 'ERR_KVM_CLOSED'],
  ['ConversionError', lib.ConversionError, 'ERR_KVM_CONVERSION_PARTIAL'],
  ['GuestAssertError', lib.GuestAssertError, 'ERR_KVM_GUEST_ASSERT'],
  ['GuestTimeoutError', lib.GuestTimeoutError, 'ERR_KVM_GUEST_TIMEOUT'],
  ['UnexpectedExitError', lib.UnexpectedExitError, 'ERR_KVM_UNEXPECTED_EXIT'],
  // A random guest program can fault (#DE, #UD, #PF...): the IDT's stubs report it.
  ['GuestExceptionError', lib.GuestExceptionError, 'ERR_KVM_GUEST_EXCEPTION'],
  ['PhysPagesExhaustedError', lib.PhysPagesExhaustedError, 'ERR_KVM_GUEST_PHYS_EXHAUSTED'],
  // A reservation's unmap while a fixed mapping lives in it, or a mapping a memslot uses.
  ['MappingInUseError', lib.MappingInUseError, 'ERR_KVM_MAPPING_IN_USE'],
  ['KvmApiVersionError', lib.KvmApiVersionError, 'ERR_KVM_API_VERSION'],
  ['AsmError', lib.AsmError, 'ERR_KVM_ASM'],
];

function messageOf(e: unknown): string {
  try {
    return e instanceof Error ? e.message : String(e);
  } catch {
    return '(unprintable)';
  }
}

function nameOf(e: unknown): string {
  if (e === null || typeof e !== 'object') return typeof e;
  try {
    return (e as { constructor?: { name?: string } }).constructor?.name ?? 'Object';
  } catch {
    return 'Object';
  }
}

/** Whether `e` is an error the API documents, as it documents it. */
export function classify(e: unknown): Verdict {
  const message = messageOf(e).slice(0, 300);
  const bad = (why: string): Verdict => ({ documented: false, cls: nameOf(e), why, message });
  const ok = (cls: string, code?: string): Verdict => ({ documented: true, cls, ...(code === undefined ? {} : { code }), message });
  // A hazard's own throw must come out unchanged (callbacks and getters
  // propagate as they are).
  if (e instanceof HazardSentinel) return ok('HazardSentinel');
  if (!(e instanceof Error)) return bad(`a non-Error value was thrown (${typeof e})`);
  const code = (e as { code?: unknown }).code;
  if ((VcpuBusyError !== undefined && e instanceof VcpuBusyError) || code === BUSY_CODE) {
    return code === BUSY_CODE ? ok('VcpuBusyError', BUSY_CODE) : bad(`VcpuBusyError with code ${String(code)}`);
  }
  if (e instanceof KvmError) {
    if (typeof code !== 'string' || !/^E[A-Z0-9]+$/.test(code)) return bad(`KvmError code ${String(code)} is not an errno name`);
    if (!Number.isInteger(e.errno) || e.errno <= 0) return bad(`KvmError errno ${String(e.errno)}`);
    if (typeof e.syscall !== 'string') return bad('KvmError without a syscall');
    return ok('KvmError', code);
  }
  if (e instanceof lib.KvmRuleError) {
    if (code !== 'ERR_KVM_RULE' || typeof e.rule !== 'string') return bad(`KvmRuleError code ${String(code)} rule ${String(e.rule)}`);
    return ok(e.name, `ERR_KVM_RULE:${e.rule}`);
  }
  if (e instanceof lib.GuestMapError) {
    return code === 'ERR_KVM_GUEST_GVA_MAPPED' || code === 'ERR_KVM_GUEST_PAGE_TABLE'
      ? ok('GuestMapError', code)
      : bad(`GuestMapError with code ${String(code)}`);
  }
  for (const [name, cls, want] of CODED) {
    if (e instanceof cls) return code === want ? ok(name, want) : bad(`${name} with code ${String(code)}`);
  }
  if (e instanceof RangeError) {
    // A RangeError is documented for bad ranges, not for the package running
    // out of stack (unbounded recursion through a re-entrant call).
    if (/Maximum call stack size exceeded/.test(message)) return bad('stack overflow');
    return ok('RangeError', typeof code === 'string' ? code : undefined);
  }
  if (e instanceof TypeError) return ok('TypeError', typeof code === 'string' ? code : undefined);
  return bad(`${nameOf(e)} is not a documented error class`);
}

// ---- memslot table vs kernel ---------------------------------------------------

const PAGE = 4096n;
const EEXIST = 17;
const EINVAL = 22;
/** Gaps are probed below this gpa only: higher ones meet the host's largest gfn (2^52 here), which is not a table property. */
const GAP_PROBE_LIMIT = 1n << 44n;
/** Free ids always probed with a delete: a redirected add lands on the lowest free id of its own VM, which is low. */
const LOW_IDS = 32;

export interface ProbeEnv {
  /** A 1-page mapping owned by the harness: the userspace_addr of every probe slot. */
  probeAddr: bigint;
  /**
   * Per VM type, the errno this kernel gives for a guest_memfd page that is
   * already bound (EINVAL to 6.18, EEXIST from 7.2: lib/kvm/kernel-behaviour.ts),
   * learned by the child before its baseline; without it, the release decides.
   */
  overlapErrno?: Partial<Record<lib.VmTypeName, number>>;
  /** Every slot id any call of this process named or got (a redirected call uses another VM's ids). */
  usedIds: Set<number>;
}

/** null on success, else the errno (raw layer: nothing judged, no table touched). */
function send(fd: number, slot: number, flags: number, gpa: bigint, size: bigint, uaddr: bigint, gmemOffset = 0n, gmemFd = 0): number | null {
  try {
    raw.setUserMemoryRegion2(fd, { slot, flags, guestPhysAddr: gpa, memorySize: size, userspaceAddr: uaddr, guestMemfdOffset: gmemOffset, guestMemfd: gmemFd });
    return null;
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
    // Before 6.8 only v1 exists (ENOTTY for v2): the VM sends v1, so does the probe.
    if (e.code !== 'ENOTTY') return e.errno;
  }
  try {
    raw.setUserMemoryRegion(fd, { slot, flags, guestPhysAddr: gpa, memorySize: size, userspaceAddr: uaddr });
    return null;
  } catch (e) {
    if (e instanceof KvmError) return e.errno;
    throw e;
  }
}

function errName(n: number | null): string {
  return n === null ? 'success' : errnoName(n);
}

/**
 * Compares the package's memslot table of `vm` with the kernel's; returns
 * the mismatches (empty when they agree). A stray kernel slot found under a
 * free id is deleted, so one divergence is reported once, not at every
 * later call. `full` adds the guest_memfd binding probes.
 */
export function probeVm(vm: Vm, env: ProbeEnv, full: boolean): string[] {
  if (vm.closed) return [];
  let fd: number;
  let slots: Memslot[];
  let caps: lib.Capabilities;
  try {
    fd = vm.fd;
    caps = vm.capabilities();
    slots = vm.memslots();
  } catch (e) {
    if (e instanceof ClosedError) return [];
    return [`vm.memslots()/capabilities() threw ${nameOf(e)}: ${messageOf(e)}`];
  }
  const bad: string[] = [];
  const label = `VM #${vm.id}`;
  const h = (v: bigint | number): string => '0x' + v.toString(16);
  for (let as = 0; as < caps.addressSpaces; as++) {
    const mine = slots.filter((s) => s.addressSpace === as).sort((a, b) => a.gpa - b.gpa);
    const inUse = new Set(mine.map((s) => s.slot));
    const free = [...new Set([...Array.from({ length: LOW_IDS }, (_, i) => i), ...env.usedIds])]
      .filter((id) => id < caps.nrMemslots && !inUse.has(id))
      .sort((a, b) => a - b);
    // 1. Free ids: the kernel must have nothing there.
    for (const id of free) {
      const r = send(fd, as * 65536 + id, 0, 0n, 0n, 0n);
      if (r === null) bad.push(`${label}: memslot ${as}:${id} existed in the kernel but not in vm.memslots() (deleted it now)`);
      else if (r !== EINVAL) bad.push(`${label}: deleting free memslot ${as}:${id} gave ${errName(r)}, not EINVAL`);
    }
    const probeId = free[0];
    if (probeId === undefined) continue;
    const probeSlot = as * 65536 + probeId;
    // 2. Every slot of the package's table, as the kernel sees it.
    for (const s of mine) {
      const first = BigInt(s.gpa);
      const last = first + BigInt(s.size) - PAGE;
      for (const gpa of first === last ? [first] : [first, last]) {
        const r = send(fd, probeSlot, 0, gpa, PAGE, env.probeAddr);
        if (r === EEXIST) continue;
        bad.push(
          `${label}: memslot ${as}:${s.slot} [${h(s.gpa)}, +${h(s.size)}) is in vm.memslots(), but a 1-page slot at ${h(gpa)} gave ${errName(r)}, not EEXIST`,
        );
        if (r === null) send(fd, probeSlot, 0, 0n, 0n, 0n);
      }
      if (s.guestMemfd === null) {
        // Re-sending the slot as it is: "nothing to change" (0) when the
        // kernel holds exactly this id, base, size, address and READONLY.
        const r = send(fd, as * 65536 + s.slot, s.flags, BigInt(s.gpa), BigInt(s.size), s.userspaceAddr);
        if (r !== null)
          bad.push(
            `${label}: re-sending memslot ${as}:${s.slot} as vm.memslots() has it gave ${errName(r)} (the kernel's slot ${s.slot} differs or is missing)`,
          );
      } else if (!s.guestMemfd.closed) {
        // A guest_memfd slot is immutable: re-sending it must be refused (EINVAL) if it exists.
        const r = send(fd, as * 65536 + s.slot, s.flags, BigInt(s.gpa), BigInt(s.size), s.userspaceAddr, BigInt(s.guestMemfdOffset), s.guestMemfd.fd);
        if (r !== EINVAL) {
          bad.push(`${label}: re-sending guest_memfd memslot ${as}:${s.slot} gave ${errName(r)}, not EINVAL (the kernel has no such slot)`);
          if (r === null) send(fd, as * 65536 + s.slot, 0, 0n, 0n, 0n);
        }
      }
    }
    // 3. Gaps: each must take a 1-page slot at its start and its last page.
    let cursor = 0n;
    const gaps: [bigint, bigint][] = [];
    for (const s of mine) {
      if (BigInt(s.gpa) > cursor) gaps.push([cursor, BigInt(s.gpa)]);
      cursor = BigInt(s.gpa) + BigInt(s.size);
    }
    gaps.push([cursor, 1n << 64n]);
    for (const [start, end] of gaps) {
      for (const gpa of [start, end - PAGE]) {
        if (gpa >= GAP_PROBE_LIMIT || gpa < start) continue;
        const r = send(fd, probeSlot, 0, gpa, PAGE, env.probeAddr);
        if (r !== null) bad.push(`${label}: gpa ${h(gpa)} is free in vm.memslots(), but a 1-page slot there gave ${errName(r)}`);
        else if (send(fd, probeSlot, 0, 0n, 0n, 0n) !== null) bad.push(`${label}: could not delete probe slot ${as}:${probeId}`);
      }
    }
    if (!full || as !== 0 || !caps.guestMemfd) continue;
    // 4. guest_memfd bindings (the 1:1 rule, file side), for small files.
    const top = mine.reduce((m, s) => (BigInt(s.gpa) + BigInt(s.size) > m ? BigInt(s.gpa) + BigInt(s.size) : m), 0n);
    if (top + PAGE > GAP_PROBE_LIMIT) continue;
    for (const g of vm.guestMemfds()) {
      if (g.size > 64 * 4096 * 16) continue;
      let gfd: number;
      try {
        gfd = g.fd;
      } catch {
        continue;
      }
      const bound = g.boundRanges().sort((a, b) => a.offset - b.offset);
      let pos = 0;
      const unbound: number[] = [];
      const overlap = env.overlapErrno?.[vm.type] ?? bindingOverlapErrnoOfRelease(release());
      for (const b of bound) {
        const r = send(fd, probeSlot, lib.MemFlag.GUEST_MEMFD, top, PAGE, 0n, BigInt(b.offset), gfd);
        if (r !== overlap) {
          bad.push(
            `${label}: ${g.label} page ${h(b.offset)} is bound in boundRanges(), but binding it again gave ${errName(r)}, not ${errName(overlap)} (this kernel's answer for a bound page)`,
          );
          if (r === null) send(fd, probeSlot, 0, 0n, 0n, 0n);
        }
        if (b.offset > pos) unbound.push(pos);
        pos = b.offset + b.size;
      }
      if (pos < g.size) unbound.push(pos);
      for (const off of unbound) {
        const r = send(fd, probeSlot, lib.MemFlag.GUEST_MEMFD, top, PAGE, 0n, BigInt(off), gfd);
        if (r !== null) bad.push(`${label}: ${g.label} page ${h(off)} is unbound in boundRanges(), but binding it gave ${errName(r)}`);
        else send(fd, probeSlot, 0, 0n, 0n, 0n);
      }
    }
  }
  return bad;
}

// ---- fds and mappings ------------------------------------------------------------

export interface Snapshot {
  /** fd -> readlink target. */
  fds: Map<number, string>;
  /** MAP_SHARED lines of /proc/self/maps (every mapping the package makes is shared; V8 and malloc make private ones). */
  shared: string[];
  /**
   * Number of /proc/self/maps lines other than private anonymous ones
   * (files, [heap], [vdso], shared): V8's and malloc's private anonymous
   * mappings come and go with the heap, so counting them would test V8.
   */
  named: number;
}

/** null when the fd table is full (RLIMIT_NOFILE hazard): listing /proc/self/fd needs an fd itself. */
export function snapshot(): Snapshot | null {
  const fds = new Map<number, string>();
  let names: string[];
  try {
    names = readdirSync('/proc/self/fd');
  } catch (e) {
    if ((e as { code?: string }).code === 'EMFILE') return null;
    throw e;
  }
  for (const name of names) {
    try {
      fds.set(Number(name), readlinkSync(`/proc/self/fd/${name}`));
    } catch {
      // the directory's own fd, closed once listed
    }
  }
  let maps: string;
  try {
    maps = readFileSync('/proc/self/maps', 'utf8');
  } catch (e) {
    if ((e as { code?: string }).code === 'EMFILE') return null;
    throw e;
  }
  const lines = maps.split('\n').filter(Boolean);
  const shared = lines.filter((l) => /^\S+ \S{3}s /.test(l));
  const named = lines.filter((l) => /^\S+ \S{3}s /.test(l) || l.trim().split(/\s+/).length > 5).length;
  return { fds, shared, named };
}

/**
 * Fds of JavaScript sources, left by Node's own module loader: a worker
 * terminated while it loads its modules (the ESM loader reads each source
 * with an async fs.readFile) never closes the files of the reads in flight.
 * Seen in the 6.1 test VM (TCG makes module loading slow enough): a worker
 * terminated 0 ms after it was ready left 12 fds on dist/lib/*.js. The
 * package never opens such files, so they are not its leak.
 */
const NODE_LOADER_TARGET = /\.(js|mjs|cjs|json)$/;

/** What `now` has that `base` has not (and the reverse): empty when nothing leaked. */
export function diffSnapshots(base: Snapshot, now: Snapshot): string[] {
  const out: string[] = [];
  for (const [fd, target] of now.fds) {
    if (!base.fds.has(fd) && NODE_LOADER_TARGET.test(target)) continue;
    if (base.fds.get(fd) !== target) out.push(`fd ${fd} -> ${target} is open (baseline: ${base.fds.get(fd) ?? 'closed'})`);
  }
  for (const [fd, target] of base.fds) if (!now.fds.has(fd)) out.push(`fd ${fd} -> ${target} of the baseline was closed`);
  const before = new Set(base.shared);
  const extra = now.shared.filter((l) => !before.has(l));
  if (extra.length > 0) out.push(`${extra.length} shared mapping(s) left: ${extra.slice(0, 4).join(' | ')}`);
  // More, not fewer: Node and glibc drop some of their own (file) mappings over time.
  else if (now.named > base.named) out.push(`${now.named} /proc/self/maps lines other than private anonymous ones, ${base.named} at the baseline`);
  return out;
}

const KVM_TARGET = /^(\/dev\/kvm|anon_inode:kvm-|anon_inode:\[kvm-gmem\])/;
const O_CLOEXEC = 0o2000000;

/** KVM fds without FD_CLOEXEC ("fd -> target"), read from /proc/self/fdinfo. */
export function cloexecViolations(): string[] {
  const out: string[] = [];
  let names: string[];
  try {
    names = readdirSync('/proc/self/fd');
  } catch (e) {
    if ((e as { code?: string }).code === 'EMFILE') return out; // the fd table is full: checked at the next chance
    throw e;
  }
  for (const name of names) {
    let target: string;
    let flags: number;
    try {
      target = readlinkSync(`/proc/self/fd/${name}`);
      if (!KVM_TARGET.test(target)) continue;
      const m = /^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${name}`, 'utf8'));
      if (m === null) continue;
      flags = parseInt(m[1] as string, 8);
    } catch {
      continue; // closed meanwhile (a worker thread's)
    }
    if ((flags & O_CLOEXEC) === 0) out.push(`fd ${name} -> ${target}`);
  }
  return out;
}
