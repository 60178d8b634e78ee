#!/usr/bin/env node
// A port of the kernel's KVM selftest
// tools/testing/selftests/kvm/x86/private_mem_conversions_test.c (6.12:
// x86_64/), written with kvm-gmem and kvm-gmem/selftest. Each vCPU owns
// 2 MiB + 4 KiB of guest memory backed by one guest_memfd (private) and by
// userspace memory of the chosen backing (shared); the guest converts ranges
// of it between shared and private with KVM_HC_MAP_GPA_RANGE hypercalls, and
// asks the host, with ucall SYNCs, to check that shared data shows through
// userspace_addr and private data does not.
//
//   node dist/selftests/private_mem_conversions_test.js [-n vcpus] [-m memslots] [-s backing]
//
// Options as the C test's (-s: anonymous, anonymous_thp, shmem,
// anonymous_hugetlb); KVM_GMEM_SELFTEST_ARGS="-n 2 -m 2" replaces argv when
// set (a runner may import this file in-process). It prints KTAP and exits
// 0 (pass), 1 (fail) or 4 (skip), as kselftest does.
//
// The check IDs (PC-S1, PC-1..PC-7 on the host, PC-G1..PC-G6 in the guest)
// are those of /work/shared/selftests/CHECKS.md section 3; each appears in a
// test name, an assertion message or a comment where the check happens.
import { parseArgs } from 'node:util';
import {
  emitUcall,
  Falloc,
  Guest,
  KVM_HC_MAP_GPA_RANGE,
  Kvm,
  KvmError,
  Mapping,
  MemFlag,
  MemoryAttribute,
  Mmap,
  mem,
  raw,
  Ucall,
  type Assembler,
  type GuestIo,
  type HypercallExit,
  type SyncUcall,
  type VcpuExit,
  type Vm,
} from 'kvm-gmem';
import { assert, assertEq, diag, requires, skip, test } from 'kvm-gmem/selftest';

// PC-S1: TEST_REQUIRE(kvm_check_cap(KVM_CAP_VM_TYPES) & BIT(KVM_X86_SW_PROTECTED_VM)),
// before the options are parsed, as in the C test's main(): any option set
// skips the same way (`1..0 # SKIP ...`, exit 4).
requires('vm-type:sw-protected');

const PAGE = 4096;
const SZ_2M = 0x20_0000;
const BASE_DATA_SLOT = 10;
const BASE_DATA_GPA = 2 ** 32;
const PER_CPU_DATA_SIZE = SZ_2M + PAGE;

// The guest's requests, in the hypercall's attrs argument (args[2]): the
// test's own bits, KVM passes them through to the host untouched.
const MAP_GPA_SET_ATTRIBUTES = 1n << 0n;
const MAP_GPA_SHARED = 1n << 1n;
const MAP_GPA_DO_FALLOCATE = 1n << 2n;

// ucall SYNC commands (args[0]).
const SYNC_SHARED = 0;
const SYNC_PRIVATE = 1;

// Byte patterns of guest_test_explicit_conversion() and guest_test_punch_hole().
const DEF_P = 0xaa;
const INIT_P = 0xcc;
const P1 = 0x11;
const P2 = 0x22;
const P3 = 0x33;
const P4 = 0x44;

// test_ranges[]: (offset, size) inside a vCPU's area.
const TEST_RANGES = [
  { offset: 0, size: PAGE },
  { offset: 0, size: SZ_2M },
  { offset: PAGE, size: PAGE },
  { offset: PAGE, size: SZ_2M },
  { offset: SZ_2M, size: PAGE },
] as const;

// ---------------------------------------------------------------------------
// Options

const BACKINGS = ['anonymous', 'anonymous_thp', 'shmem', 'anonymous_hugetlb'] as const;
type Backing = (typeof BACKINGS)[number];

interface Options {
  vcpus: number;
  memslots: number;
  backing: Backing;
}

const USAGE = `usage: private_mem_conversions_test [-h] [-m nr_memslots] [-s mem_type] [-n nr_vcpus]

 -s: specify the type of memory that should be used to back the guest's
     shared memory: ${BACKINGS.join(', ')} (default: anonymous)
 -n: specify the number of vcpus (default: 1)
 -m: specify the number of memslots (default: 1)
KVM_GMEM_SELFTEST_ARGS (e.g. "-n 2 -m 2"), when set, is read instead of the command line.`;

/** The arguments: KVM_GMEM_SELFTEST_ARGS when set (an in-process runner's), else argv. */
function commandLine(): string[] {
  const env = process.env.KVM_GMEM_SELFTEST_ARGS;
  if (env !== undefined) return env.split(/\s+/).filter((s) => s !== '');
  return process.argv.slice(2);
}

// Bad options end the file with an error (exit 1 run alone; a `Bail out!`
// for this file under the suite runner, which goes on with the next), never
// process.exit(), which would end a runner that loaded the file.
class UsageError extends Error {
  constructor(message: string) {
    super(`${message}\n${USAGE}`);
    this.name = 'UsageError';
  }
}

// atoi_positive(): a bad count is a failure of the test, as the C test's TEST_ASSERT.
function positive(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n <= 0) throw new UsageError(`${name} must be a positive integer, got '${value}'`);
  return n;
}

function parseOptions(args: string[]): Options {
  let values: { vcpus?: string; memslots?: string; backing?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args,
      options: {
        vcpus: { type: 'string', short: 'n' },
        memslots: { type: 'string', short: 'm' },
        backing: { type: 'string', short: 's' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch {
    values = { help: true }; // getopt's '?': the C test prints its usage and exits 0
  }
  // -h: the usage, and no test runs (the C test exits 0 there; a file skip here).
  if (values.help) skip(`usage: ${USAGE.replace(/\s*\n\s*/g, ' ')}`);
  const backing = values.backing ?? 'anonymous';
  if (!(BACKINGS as readonly string[]).includes(backing)) throw new UsageError(`Unknown backing src type: ${backing}`);
  return { vcpus: positive('nr_vcpus', values.vcpus, 1), memslots: positive('nr_memslots', values.memslots, 1), backing: backing as Backing };
}

const options = parseOptions(commandLine());

// ---------------------------------------------------------------------------
// Guest code. Everything below is generated at assembly time: the ranges,
// patterns and branches of the C guest are known to the host, so they are
// unrolled here; only base_gpa (RDI at entry, kept in R15) is a run-time value.

/** Emits the guest's helpers (memset, memcmp_g, the hypercall, the syncs) with unique labels. */
class GuestWriter {
  #n = 0;
  constructor(
    readonly a: Assembler,
    readonly io: GuestIo,
    readonly hypercall: 'vmcall' | 'vmmcall',
  ) {}

  #label(what: string): string {
    return `${what}_${this.#n++}`;
  }

  // RDI = base_gpa + offset.
  #address(reg: 'rdi' | 'rbx', offset: number): void {
    this.a.mov(reg, 'r15');
    if (offset !== 0) this.a.add(reg, offset);
  }

  /** memset((void *)(base + offset), pattern, size), a qword at a time (every size is a multiple of 8). */
  memset(offset: number, size: number, pattern: number): void {
    const loop = this.#label('memset');
    this.#address('rdi', offset);
    this.a.mov('rcx', size / 8);
    this.a.mov('rax', qword(pattern));
    this.a.label(loop);
    this.a.mov(mem(64, 'rdi', 0), 'rax');
    this.a.add('rdi', 8).dec('rcx').jnz(loop);
  }

  /** memcmp_g(): every byte of [base + offset, +size) must hold `pattern`; else a guest assert naming `check`. */
  memcmp(offset: number, size: number, pattern: number, check: string): void {
    const loop = this.#label('memcmp');
    const bad = this.#label('memcmp_bad');
    const ok = this.#label('memcmp_ok');
    this.#address('rdi', offset);
    this.a.mov('rcx', size / 8);
    this.a.mov('rax', qword(pattern));
    this.a.label(loop);
    this.a.mov('rdx', mem(64, 'rdi', 0));
    this.a.cmp('rdx', 'rax').jne(bad);
    this.a.add('rdi', 8).dec('rcx').jnz(loop);
    this.a.jmp(ok);
    this.a.label(bad);
    // The C macro's "Guest expected 0x%x at offset %lu (gpa 0x%lx), got 0x%x", per qword.
    this.io.printf(`${check}: guest expected 0x%lx at gpa 0x%lx, got 0x%lx`, 'rax', 'rdi', 'rdx');
    this.io.assertEq('rdx', 'rax', `${check} (memcmp_g)`);
    this.a.label(ok);
  }

  /** kvm_hypercall_map_gpa_range(): RAX = 12, RBX = gpa, RCX = pages, RDX = attrs, RSI = 0; the guest asserts it returned 0. */
  mapGpaRange(offset: number, size: number, attrs: bigint, check: string): void {
    this.#address('rbx', offset);
    this.a.mov('rax', Number(KVM_HC_MAP_GPA_RANGE));
    this.a.mov('rcx', size / PAGE);
    this.a.mov('rdx', Number(attrs));
    this.a.mov('rsi', 0);
    if (this.hypercall === 'vmmcall') this.a.vmmcall();
    else this.a.vmcall();
    this.io.assertEq('rax', 0, `${check}: KVM_HC_MAP_GPA_RANGE (PC-5: hypercall.ret must be 0)`);
  }

  /** guest_map_shared() / guest_map_private(): SET_ATTRIBUTES, plus DO_FALLOCATE when asked. */
  map(offset: number, size: number, shared: boolean, doFallocate: boolean, check: string): void {
    const attrs = MAP_GPA_SET_ATTRIBUTES | (shared ? MAP_GPA_SHARED : 0n) | (doFallocate ? MAP_GPA_DO_FALLOCATE : 0n);
    this.mapGpaRange(offset, size, attrs, check);
  }

  /** guest_punch_hole(): SHARED|DO_FALLOCATE without SET_ATTRIBUTES, i.e. only fallocate(PUNCH_HOLE). */
  punchHole(offset: number, size: number, check: string): void {
    this.mapGpaRange(offset, size, MAP_GPA_SHARED | MAP_GPA_DO_FALLOCATE, check);
  }

  /** GUEST_SYNC5(SYNC_SHARED, gpa, size, current, new): the host checks `current`, then writes `next`. */
  syncShared(offset: number, size: number, current: number, next: number): void {
    this.#address('rbx', offset);
    emitUcall(this.a, Ucall.SYNC, SYNC_SHARED, 'rbx', size, current, next);
  }

  /** GUEST_SYNC4(SYNC_PRIVATE, gpa, size, pattern): the host checks it still sees `pattern`. */
  syncPrivate(offset: number, size: number, pattern: number): void {
    this.#address('rbx', offset);
    emitUcall(this.a, Ucall.SYNC, SYNC_PRIVATE, 'rbx', size, pattern, 0);
  }
}

/** A byte repeated in all eight bytes of a qword. */
function qword(byte: number): bigint {
  return BigInt(byte) * 0x0101_0101_0101_0101n;
}

/** guest_test_explicit_conversion(base_gpa, do_fallocate). */
function explicitConversion(g: GuestWriter, doFallocate: boolean): void {
  const run = doFallocate ? 'with fallocate' : 'attributes only';
  // PC-G1: memory is shared by default; the host sees def and writes init.
  g.memset(0, PER_CPU_DATA_SIZE, DEF_P);
  g.memcmp(0, PER_CPU_DATA_SIZE, DEF_P, `PC-G1 (${run}) the guest reads back def 0xaa over its whole area`);
  g.syncShared(0, PER_CPU_DATA_SIZE, DEF_P, INIT_P);
  g.memcmp(0, PER_CPU_DATA_SIZE, INIT_P, `PC-G1 (${run}) the guest reads init 0xcc, written by the host`);

  for (const { offset, size } of TEST_RANGES) {
    const where = `${run}, range +0x${offset.toString(16)} size 0x${size.toString(16)}`;
    // PC-G2: p1, then to private; private writes must not reach the host's view.
    g.memset(offset, size, P1);
    g.map(offset, size, false, doFallocate, `PC-G2 (${where}) to private`);
    if (size > PAGE) {
      g.memset(offset, PAGE, P2);
    } else {
      g.memset(offset, size, P2);
      g.syncPrivate(offset, size, P1); // PC-G2: the host still sees p1
      g.memcmp(offset, size, P2, `PC-G2 (${where}) the guest reads p2 0x22 in the private range`);
      if (offset > 0) g.memcmp(0, offset, INIT_P, `PC-G2 (${where}) init 0xcc below the range`);
      if (offset + size < PER_CPU_DATA_SIZE) g.memcmp(offset + size, PER_CPU_DATA_SIZE - (offset + size), INIT_P, `PC-G2 (${where}) init 0xcc above the range`);
      // PC-G3: odd pages back to shared (holes in a private range), even
      // pages stay private. As in the C test, with these ranges only 4 KiB
      // ranges get here, so only page 0 (even) is ever emitted.
      for (let j = 0; j < size; j += PAGE) {
        if ((j / PAGE) % 2 === 1) {
          g.map(offset + j, PAGE, true, doFallocate, `PC-G3 (${where}) odd page to shared`);
          g.syncShared(offset + j, PAGE, P1, P3);
          g.memcmp(offset + j, PAGE, P3, `PC-G3 (${where}) the guest reads p3 0x33 on the odd page`);
        } else {
          g.syncPrivate(offset + j, PAGE, P1); // PC-G3: the host still sees p1 on the even page
        }
      }
    }
    // PC-G4: the whole range back to shared; the host sees p3 and writes p4.
    g.map(offset, size, true, doFallocate, `PC-G4 (${where}) to shared`);
    g.memset(offset, size, P3);
    g.syncShared(offset, size, P3, P4);
    g.memcmp(offset, size, P4, `PC-G4 (${where}) the guest reads p4 0x44, written by the host`);
    g.memset(offset, size, INIT_P);
    // PC-G4: punch all private memory, so the next range starts from no guest_memfd pages.
    g.map(0, PER_CPU_DATA_SIZE, true, true, `PC-G4 (${where}) whole area to shared with fallocate`);
  }
}

/** guest_test_punch_hole(base_gpa, precise). */
function punchHoleTest(g: GuestWriter, precise: boolean): void {
  const run = precise ? 'only the range faulted in' : 'whole area faulted in';
  // PC-G5: the whole area private (attributes only); shared mappings are not needed.
  g.map(0, PER_CPU_DATA_SIZE, false, false, `PC-G5 (${run}) whole area to private`);
  for (const { offset, size } of TEST_RANGES) {
    const where = `${run}, range +0x${offset.toString(16)} size 0x${size.toString(16)}`;
    g.punchHole(0, PER_CPU_DATA_SIZE, `PC-G5 (${where}) punch the whole area`);
    if (precise) {
      g.memset(offset, size, INIT_P);
      g.memcmp(offset, size, INIT_P, `PC-G5 (${where}) the guest reads back init 0xcc in the range`);
    } else {
      g.memset(0, PER_CPU_DATA_SIZE, INIT_P);
      g.memcmp(0, PER_CPU_DATA_SIZE, INIT_P, `PC-G5 (${where}) the guest reads back init 0xcc over the area`);
    }
    g.punchHole(offset, size, `PC-G5 (${where}) punch the range`);
    g.memcmp(offset, size, 0, `PC-G5 (${where}) the punched range reads zero`);
  }
}

/** guest_code(base_gpa): base_gpa arrives in RDI. */
function guestCode(a: Assembler, io: GuestIo, hypercall: 'vmcall' | 'vmmcall'): void {
  const g = new GuestWriter(a, io, hypercall);
  a.mov('r15', 'rdi');
  explicitConversion(g, false);
  explicitConversion(g, true);
  punchHoleTest(g, false);
  punchHoleTest(g, true);
  io.done(); // PC-G6: GUEST_DONE()
}

/** The library's kvm_hypercall(): vmmcall on an AMD (or Hygon) host CPU, vmcall elsewhere. */
function hypercallInsn(vm: Vm): 'vmcall' | 'vmmcall' {
  const leaf0 = vm.supportedCpuid().find((e) => e.function === 0);
  const vendor = leaf0 === undefined ? '' : Buffer.from(new Uint32Array([leaf0.ebx, leaf0.edx, leaf0.ecx]).buffer).toString('latin1');
  return vendor === 'AuthenticAMD' || vendor === 'HygonGenuine' ? 'vmmcall' : 'vmcall';
}

// ---------------------------------------------------------------------------
// Host side

/** Page size of a backing (get_backing_src_pagesz()): 2 MiB for THP and hugetlb. */
function backingPageSize(b: Backing): number {
  return b === 'anonymous_thp' || b === 'anonymous_hugetlb' ? SZ_2M : PAGE;
}

function alignUp(x: number, align: number): number {
  return Math.ceil(x / align) * align;
}

/** One memslot of guest data: slot 10+i at 4 GiB + i * slot size, the guest_memfd at file offset i * slot size. */
interface DataSlot {
  id: number;
  gpa: number;
  size: number;
  fileOffset: number;
  /** The shared backing, userspace_addr of the memslot. */
  host: Mapping;
  free: () => void;
}

interface Sizes {
  perCpu: number;
  memfd: number;
  slot: number;
}

interface State {
  sizes?: Sizes;
  kvm?: Kvm;
  vm?: Vm;
  guest?: Guest;
  gmem?: raw.RawFd;
  slots: DataSlot[];
}

const state: State = { slots: [] };

/**
 * vm_mem_add()'s userspace memory for one memslot: MAP_PRIVATE anonymous
 * memory (madvised MADV_HUGEPAGE for anonymous_thp, MAP_HUGETLB for
 * anonymous_hugetlb), or a MAP_SHARED memfd for shmem, at an address aligned
 * to the backing's page size. Mapping's checked constructors make only
 * shared mappings, so this one is placed with reserve() + mapFixed(); such a
 * mapping has no views, and the host reads and writes it with probe().
 */
function mapBacking(kind: Backing, size: number): { host: Mapping; free: () => void } {
  const align = backingPageSize(kind);
  const reservation = Mapping.reserve(size + align - PAGE);
  const at = Number((BigInt(align) - (reservation.address % BigInt(align))) % BigInt(align));
  let file: raw.RawFd | undefined;
  try {
    let flags = Mmap.MAP_PRIVATE | Mmap.MAP_ANONYMOUS;
    if (kind === 'shmem') {
      // kvm_memfd_alloc(): a memfd of the slot's size, allocated.
      file = raw.memfdCreate('private_mem_conversions_test');
      raw.fallocate(file, 0, 0, size);
      flags = Mmap.MAP_SHARED;
    } else if (kind === 'anonymous_hugetlb') {
      flags |= Mmap.MAP_HUGETLB;
    }
    const host = reservation.mapFixed({ at, length: size, fd: file?.fd ?? -1, flags });
    if (kind === 'anonymous_thp') host.advise(0, size, Mmap.MADV_HUGEPAGE);
    const memfd = file;
    return {
      host,
      free: () => {
        host.unmap();
        reservation.unmap();
        memfd?.close();
      },
    };
  } catch (e) {
    reservation.unmap();
    file?.close();
    throw e;
  }
}

/** KVM_SET_USER_MEMORY_REGION2 for a data slot; memorySize 0 deletes it (vm_mem_region_delete()). */
function setDataSlot(vm: Vm, gmem: raw.RawFd, s: DataSlot, memorySize: number): void {
  raw.setUserMemoryRegion2(vm, {
    slot: s.id,
    flags: MemFlag.GUEST_MEMFD,
    guestPhysAddr: s.gpa,
    memorySize,
    userspaceAddr: s.host.address,
    guestMemfdOffset: s.fileOffset,
    guestMemfd: gmem.fd,
  });
}

/** The data slot holding `gpa` (userspace_mem_region_find()); the gpa must lie in a GUEST_MEMFD slot. */
function slotAt(gpa: number): DataSlot {
  const s = state.slots.find((x) => gpa >= x.gpa && gpa < x.gpa + x.size);
  assert(s !== undefined, `Private memory region not found for GPA 0x${gpa.toString(16)}`);
  return s;
}

/**
 * vm_guest_mem_fallocate(): for each memslot the range touches,
 * fallocate(KEEP_SIZE | (punch ? PUNCH_HOLE : 0)) on its guest_memfd at the
 * matching file offset.
 */
function guestMemFallocate(gpa: number, size: number, punch: boolean): void {
  const mode = Falloc.KEEP_SIZE | (punch ? Falloc.PUNCH_HOLE : 0);
  const end = gpa + size;
  while (gpa < end) {
    const s = slotAt(gpa);
    const offset = gpa - s.gpa;
    const len = Math.min(end - gpa, s.size - offset);
    raw.fallocate(state.gmem!, mode, s.fileOffset + offset, len); // PC-5: must succeed
    gpa += len;
  }
}

/** PC-5: handle_exit_hypercall(). */
function handleHypercall(vm: Vm, exit: HypercallExit): void {
  assertEq(exit.nr, KVM_HC_MAP_GPA_RANGE, `PC-5 Wanted MAP_GPA_RANGE (12), got '${exit.nr}'`);
  const gpa = Number(exit.args[0]);
  const size = Number(exit.args[1]) * PAGE;
  const attrs = exit.args[2]!;
  const shared = (attrs & MAP_GPA_SHARED) !== 0n;
  // PC-5: DO_FALLOCATE first: allocate for private, punch for shared.
  if (attrs & MAP_GPA_DO_FALLOCATE) guestMemFallocate(gpa, size, shared);
  // PC-5: then SET_ATTRIBUTES: KVM_SET_MEMORY_ATTRIBUTES(gpa, size, shared ? 0 : PRIVATE), flags 0.
  if (attrs & MAP_GPA_SET_ATTRIBUTES) raw.setMemoryAttributes(vm, { address: gpa, size, attributes: shared ? 0 : MemoryAttribute.PRIVATE, flags: 0 });
  exit.ret = 0n; // PC-5: the guest asserts it reads 0
}

/** PC-5: every exit is a hypercall or a ucall; runUntilDone() takes the ucalls, this the rest. */
function handleExit(vm: Vm, exit: VcpuExit): boolean {
  assert(exit.kind === 'hypercall', `PC-5 Wanted KVM_EXIT_HYPERCALL or KVM_EXIT_IO (ucall), got exit reason: ${exit.exitReason} (${exit.kind})`);
  handleHypercall(vm, exit);
  return true;
}

/** memcmp_h(): the host's view (userspace_addr) of [gpa, gpa + size) must hold `pattern` in every byte. */
function memcmpHost(s: DataSlot, gpa: number, pattern: number, size: number, what: string): void {
  const r = s.host.probe(gpa - s.gpa, size, 'read');
  assertEq(r.result, 'ok', `PC-6 ${what}: reading gpa 0x${gpa.toString(16)} through userspace_addr`);
  const i = r.data!.findIndex((b) => b !== pattern);
  if (i >= 0) assert(false, `PC-6 ${what}: Host expected 0x${pattern.toString(16)} at gpa 0x${(gpa + i).toString(16)}, got 0x${r.data![i]!.toString(16)}`);
}

/** PC-6: the ucall SYNC of __test_mem_conversions(). */
function handleSync(u: SyncUcall): void {
  const [cmd, gpaArg, sizeArg, current, next] = u.args.map(Number) as [number, number, number, number, number];
  assert(cmd === SYNC_SHARED || cmd === SYNC_PRIVATE, `PC-6 Unknown sync command '${cmd}' (vCPU ${u.vcpu.id})`);
  const what =
    cmd === SYNC_SHARED
      ? `SYNC_SHARED on vCPU ${u.vcpu.id}: the host sees the shared data`
      : `SYNC_PRIVATE on vCPU ${u.vcpu.id}: the guest's private writes are invisible, the host still sees the shared data`;
  for (let i = 0; i < sizeArg; i += PAGE) {
    const gpa = gpaArg + i;
    const nr = Math.min(PAGE, sizeArg - i);
    const s = slotAt(gpa);
    // In all cases, the host should observe the shared data.
    memcmpHost(s, gpa, current, nr, what);
    // For shared, write the new pattern to guest memory.
    if (cmd === SYNC_SHARED) {
      const w = s.host.probe(gpa - s.gpa, nr, 'write', next);
      assertEq(w.result, 'ok', `PC-6 writing gpa 0x${gpa.toString(16)} through userspace_addr`);
    }
  }
}

// ---------------------------------------------------------------------------
// The tests: the steps of test_mem_conversions(), in its order. A step
// whose predecessor failed is skipped; PC-7 also releases what was made.

function needs<T>(value: T | undefined, what: string): T {
  if (value === undefined) skip(`${what} was not set up (an earlier step failed or skipped)`);
  return value;
}

const { vcpus, memslots, backing } = options;
diag(`vCPUs: ${vcpus}, memslots: ${memslots}, shared backing: ${backing}`);

test(`PC-1 sizes: per-vCPU area aligned to max(2 MiB, ${backing} page), file = per-vCPU x ${vcpus}, slot = file / ${memslots}`, () => {
  const alignment = Math.max(SZ_2M, backingPageSize(backing));
  const perCpu = alignUp(PER_CPU_DATA_SIZE, alignment);
  const memfd = perCpu * vcpus;
  const slot = Math.floor(memfd / memslots);
  assertEq(slot * memslots, memfd, `PC-1 The memfd size (0x${memfd.toString(16)}) needs to be cleanly divisible by the number of memslots (${memslots})`);
  diag(`per-vCPU 0x${perCpu.toString(16)}, guest_memfd 0x${memfd.toString(16)}, memslot 0x${slot.toString(16)}`);
  state.sizes = { perCpu, memfd, slot };
});

test(`PC-2 a SW_PROTECTED VM with ${vcpus} vCPU(s), KVM_CAP_EXIT_HYPERCALL for KVM_HC_MAP_GPA_RANGE`, () => {
  needs(state.sizes, 'PC-1');
  state.kvm = Kvm.open();
  const vm = (state.vm = state.kvm.createVm({ type: 'sw-protected' }));
  const insn = hypercallInsn(vm);
  // __vm_create_with_vcpus(): vCPU 0 with the program, page tables, IDT and stack; then the others.
  const guest = (state.guest = Guest.longMode(vm, { code: (a, io) => guestCode(a, io, insn) }));
  for (let i = 1; i < vcpus; i++) guest.addVcpu();
  assertEq(guest.vcpus.length, vcpus, 'PC-2 vCPUs created');
  // vm_enable_cap(KVM_CAP_EXIT_HYPERCALL, BIT(KVM_HC_MAP_GPA_RANGE)): must succeed.
  vm.enableCap('EXIT_HYPERCALL', [1n << KVM_HC_MAP_GPA_RANGE]);
});

test(`PC-3 one guest_memfd, ${memslots} memslot(s) from slot ${BASE_DATA_SLOT} at 4 GiB on ${backing} memory`, () => {
  const sizes = needs(state.sizes, 'PC-1');
  const vm = needs(state.vm, 'PC-2');
  // vm_create_guest_memfd(vm, memfd_size, 0): must succeed. Made through the
  // raw layer so that the file, like the C test's memfd, is the test's and
  // outlives the VM (a Vm closes the guest_memfds it made), for PC-7.
  const gmem = (state.gmem = raw.createGuestMemfd(vm, { size: sizes.memfd, flags: 0 }));
  for (let i = 0; i < memslots; i++) {
    let backingMemory: { host: Mapping; free: () => void };
    try {
      backingMemory = mapBacking(backing, sizes.slot);
    } catch (e) {
      // The C test fails here (vm_mem_add's mmap assert); a machine without
      // reserved huge pages cannot run this backing at all.
      if (backing === 'anonymous_hugetlb' && e instanceof KvmError && e.code === 'ENOMEM')
        skip('no free 2 MiB huge pages for anonymous_hugetlb (vm.nr_hugepages)');
      throw e;
    }
    const s: DataSlot = { id: BASE_DATA_SLOT + i, gpa: BASE_DATA_GPA + sizes.slot * i, size: sizes.slot, fileOffset: sizes.slot * i, ...backingMemory };
    try {
      setDataSlot(vm, gmem, s, s.size); // PC-3: KVM_SET_USER_MEMORY_REGION2 must succeed
    } catch (e) {
      s.free();
      throw e;
    }
    state.slots.push(s);
  }
});

test(
  `PC-4 PC-5 PC-6 PC-G1..PC-G6 ${vcpus} vCPU(s), each on its own thread, convert their memory with KVM_HC_MAP_GPA_RANGE and check it with ucall SYNCs`,
  async () => {
    const sizes = needs(state.sizes, 'PC-1');
    const guest = needs(state.guest, 'PC-2');
    const vm = needs(state.vm, 'PC-2');
    if (state.slots.length !== memslots) skip('the memslots of PC-3 were not set up (an earlier step failed or skipped)');
    guest.vcpus.forEach((vcpu, i) => {
      const gpa = BASE_DATA_GPA + i * sizes.perCpu;
      guest.setArgs([gpa], vcpu);
      // PC-4: map only what is needed, so an out-of-bounds access is a #PF
      // (GuestExceptionError) instead of data corruption.
      guest.map(gpa, gpa, PER_CPU_DATA_SIZE);
    });
    // PC-4: runAll() starts every vCPU at once, each on its own thread; the
    // first failure kicks the others out. No deadline: TCG can be slow.
    const results = await guest.runAll({
      timeoutMs: 0,
      onSync: (_n, _guest, ucall) => handleSync(ucall), // PC-6
      onExit: (exit) => handleExit(vm, exit), // PC-5
      onPrintf: (line) => diag(line), // a failing memcmp_g's values, before its assert
    });
    results.forEach((r, i) => diag(`vCPU ${i}: ${r.exits} exits, ${r.syncs.length} syncs, done`));
  },
  { timeoutMs: 0 },
);

test('PC-7 the guest_memfd outlives its VM: punch and allocate the whole file after the VM is freed', () => {
  const sizes = needs(state.sizes, 'PC-1');
  const gmem = state.gmem;
  // kvm_vm_free(): delete each memslot (memory_size 0), close the vCPUs and
  // the VM, unmap the backing; the guest_memfd's reference keeps the VM
  // alive in the kernel.
  try {
    for (const s of state.slots) setDataSlot(state.vm!, gmem!, s, 0);
  } finally {
    state.guest?.close();
    state.vm?.close();
    state.kvm?.close();
    for (const s of state.slots.splice(0)) s.free();
  }
  const file = needs(gmem, 'PC-3');
  try {
    raw.fallocate(file, Falloc.KEEP_SIZE | Falloc.PUNCH_HOLE, 0, sizes.memfd); // PC-7: must succeed
    raw.fallocate(file, Falloc.KEEP_SIZE, 0, sizes.memfd); // PC-7: must succeed
  } finally {
    file.close();
  }
});
