// The pure parts of the C-vs-port comparison: the C selftests' failure block,
// the ports' KTAP, the mapping of a C failure to a check ID of
// shared/selftests/CHECKS.md, the agreement of the two, and the table.
// No I/O here (test/selftests-compare.test.ts runs it without /dev/kvm).
import { alignColumns } from '../../lib/cli/output.js';

/** One finished (or killed) process, as the in-VM runner records it. */
export interface RunRecord {
  /** Exit status, or null when killed by a signal. */
  exitCode: number | null;
  signal: string | null;
  /** Killed by the runner's timeout. */
  timedOut: boolean;
  /** Seconds of the timeout the runner applied. */
  timeoutS: number;
  /** The process did not go away after SIGKILL (stuck in the kernel). */
  unkillable?: boolean;
  wallMs: number;
  /** stdout and stderr, interleaved (2>&1), possibly cut in the middle. */
  output: string;
}

// ---------------------------------------------------------------------------
// C: "==== Test Assertion Failure ===="

export interface CFrame {
  func: string;
  file: string;
  line: number;
}

export interface CFailure {
  file: string;
  line: number;
  /** The asserted expression as printed. */
  expr: string;
  errno: number | undefined;
  /** The assertion's message (the lines after the backtrace). */
  message: string;
  /** addr2line frames, innermost first (may be empty). */
  frames: CFrame[];
}

const FAILURE_HEADER = '==== Test Assertion Failure ====';

/** The first failure block of a C selftest's output, or undefined. */
export function parseCFailure(output: string): CFailure | undefined {
  const at = output.indexOf(FAILURE_HEADER);
  if (at < 0) return undefined;
  const lines = output.slice(at + FAILURE_HEADER.length).split('\n');
  let i = 0;
  while (i < lines.length && lines[i]!.trim() === '') i++;
  const loc = /^\s*(\S+?):(\d+):\s?(.*)$/.exec(lines[i] ?? '');
  if (!loc) return undefined;
  i++;
  let errno: number | undefined;
  const pid = /^\s*pid=\d+ tid=\d+ errno=(-?\d+)/.exec(lines[i] ?? '');
  if (pid) {
    errno = Number(pid[1]);
    i++;
  }
  const frames: CFrame[] = [];
  const rest: string[] = [];
  for (; i < lines.length; i++) {
    const l = lines[i]!;
    // "     1\t0x0000000000402e1f: test_invalid_binding at guest_memfd_test.c:355" (cat -n of addr2line -fpai),
    // " (inlined by) main at guest_memfd_test.c:570", "  (stack trace empty)".
    const f = /^\s*(?:\d+\t)?(?:0x[0-9a-f]+: | \(inlined by\) )(\S+) at (\S+?):(\d+)/.exec(l);
    if (f) {
      frames.push({ func: f[1]!, file: f[2]!, line: Number(f[3]) });
      continue;
    }
    // Frames addr2line could not name (libc, _start at ??:?), and the note on an empty trace.
    if (/^\s*\d+\t/.test(l) || /^\s*\(stack trace empty\)/.test(l)) continue;
    // What follows the block: kselftest lines of another process, a new block.
    if (l.startsWith(FAILURE_HEADER)) break;
    rest.push(l);
  }
  const message = rest
    .map((l) => l.replace(/^ {2}/, ''))
    .join('\n')
    .trim();
  return { file: loc[1]!, line: Number(loc[2]), expr: loc[3]!.trim(), errno, message, frames };
}

/** The reason of a C selftest's `1..0 # SKIP - reason` (kselftest's ksft_exit_skip), or undefined. */
export function parseCSkip(output: string): string | undefined {
  const m = /^1\.\.0 # SKIP\s*-?\s*(.*)$/m.exec(output);
  return m ? m[1]!.trim() : undefined;
}

// ---------------------------------------------------------------------------
// C function -> CHECKS.md ID

/**
 * Per test, the check a failure inside a function stands for. `null` = a helper shared by several checks: look
 * at its caller (the next frame). A RegExp list refines by the message.
 */
type IdRule = string | null | { byMessage: [RegExp, string][]; otherwise: string };

export const FUNCTION_CHECKS: Readonly<Record<string, Readonly<Record<string, IdRule>>>> = {
  guest_memfd_test: {
    // 6.12
    test_create_guest_memfd_invalid: {
      byMessage: [
        [/page-aligned|page size/i, 'GM-1'],
        [/flag/i, 'GM-2'],
      ],
      otherwise: 'GM-1/GM-2',
    },
    test_mmap: 'GM-5',
    // 7.3
    test_create_guest_memfd_invalid_sizes: 'GM-1',
    test_guest_memfd_flags: "GM-2'",
    test_mmap_not_supported: "GM-5'",
    test_invalid_binding: 'GM-9',
    test_fault_sigbus: null,
    test_fault_private: 'GM-10',
    test_mmap_cow: 'GM-11',
    test_mbind: 'GM-12',
    test_mmap_supported: 'GM-13',
    test_fault_overflow: 'GM-14',
    test_numa_allocation: 'GM-15',
    test_collapse: 'GM-16',
    test_guest_memfd_guest: 'GM-17',
    guest_code: 'GM-17',
    __test_guest_memfd: 'GM-S5',
    test_guest_memfd: 'GM-S4',
    // both
    test_create_guest_memfd_multiple: 'GM-3',
    test_file_read_write: 'GM-4',
    test_file_size: 'GM-6',
    test_fallocate: 'GM-7',
    test_invalid_punch_hole: 'GM-8',
    main: 'GM-S1..S4',
  },
  set_memory_region_test: {
    guest_spin_on_val: null,
    vcpu_worker: 'SR-7/SR-8',
    wait_for_vcpu: null,
    spawn_vm: null,
    guest_code_move_memory_region: 'SR-7',
    test_move_memory_region: 'SR-7',
    guest_code_delete_memory_region: 'SR-8',
    test_delete_memory_region: 'SR-8',
    test_zero_memory_regions: 'SR-1',
    guest_code_mmio_during_vectoring: 'SR-2',
    test_mmio_during_vectoring: 'SR-2',
    test_invalid_memory_region_flags: 'SR-3',
    test_add_max_memory_regions: 'SR-4',
    test_invalid_guest_memfd: 'SR-5',
    test_add_private_memory_region: 'SR-5',
    test_add_overlapping_private_memory_regions: 'SR-6',
    main: 'SR-S1',
  },
  pre_fault_memory_test: {
    guest_code: 'PF-6',
    delete_slot_worker: 'PF-5',
    pre_fault_memory: {
      byMessage: [
        [/ENOENT|Wanted|left|remaining|errno/i, 'PF-4'],
        [/progress|decreas|size/i, 'PF-2'],
      ],
      otherwise: 'PF-2..PF-5',
    },
    __test_pre_fault_memory: {
      byMessage: [[/KVM_EXIT_IO|ucall|Unknown/i, 'PF-6']],
      otherwise: 'PF-1/PF-6',
    },
    test_pre_fault_memory: 'PF-0',
    main: 'PF-S1',
  },
  private_mem_conversions_test: {
    memcmp_h: 'PC-6',
    guest_sync_shared: null,
    guest_sync_private: null,
    guest_map_mem: null,
    guest_map_shared: null,
    guest_map_private: null,
    guest_test_explicit_conversion: 'PC-G1..G4',
    guest_punch_hole: 'PC-G5',
    guest_test_punch_hole: 'PC-G5',
    guest_code: 'PC-G6',
    handle_exit_hypercall: 'PC-5',
    __test_mem_conversions: 'PC-5/PC-6',
    test_mem_conversions: 'PC-1..PC-3/PC-7',
    main: 'PC-S1',
  },
  private_mem_kvm_exits_test: {
    guest_repeatedly_read: null,
    run_vcpu_get_exit_reason: 'PK-0',
    test_private_access_memslot_deleted: 'PK-1',
    test_private_access_memslot_not_private: 'PK-2',
    main: 'PK-S1',
  },
  vm_types_test: { main: 'VT-1' },
  memslot_perf_test: {
    check_mmio_access: 'MP-3',
    vcpu_worker: 'MP-3',
    wait_for_vcpu: 'MP-3',
    vm_gpa2hva: 'MP-2',
    vm_slot2gpa: 'MP-2',
    prepare_vm: 'MP-2',
    test_execute: 'MP-2',
    wait_guest_exit: 'MP-4',
    let_guest_run: 'MP-4',
    guest_spin_until_start: 'MP-4',
    make_guest_exit: 'MP-4',
    _guest_should_exit: 'MP-4',
    host_perform_sync: 'MP-4',
    guest_perform_sync: 'MP-4',
    guest_code_test_memslot_move: 'MP-6',
    test_memslot_move_prepare: 'MP-6',
    test_memslot_move_prepare_active: 'MP-6',
    test_memslot_move_prepare_inactive: 'MP-6',
    test_memslot_move_loop: 'MP-6',
    guest_code_test_memslot_map: 'MP-5',
    guest_code_test_memslot_unmap: 'MP-5',
    test_memslot_do_unmap: 'MP-5',
    test_memslot_map_unmap_check: 'MP-5',
    test_memslot_map_loop: 'MP-5',
    test_memslot_unmap_loop_common: 'MP-5',
    test_memslot_unmap_loop: 'MP-5',
    test_memslot_unmap_loop_chunked: 'MP-5',
    guest_code_test_memslot_rw: 'MP-7',
    test_memslot_rw_loop: 'MP-7',
    check_memory_sizes: 'MP-1',
    parse_args: 'MP-1',
    test_loop: 'MP-8',
    main: 'MP-1',
  },
};

/** Library helpers (tools/testing/selftests/kvm/lib) -> CHECKS.md section 8, used when no frame is in the test's file. */
const LIB_CHECKS: Readonly<Record<string, string>> = {
  vm_mem_add: 'L-2',
  vm_userspace_mem_region_add: 'L-2',
  vm_mem_region_delete: 'L-3',
  vm_mem_region_move: 'L-3',
  vm_set_memory_attributes: 'L-4',
  vcpu_run: 'L-5',
  vm_open: 'L-1',
  __vm_create: 'L-1',
  vm_create_guest_memfd: 'L-2',
  __vm_create_guest_memfd: 'L-2',
};

function applyRule(rule: IdRule, message: string): string | null {
  if (rule === null || typeof rule === 'string') return rule;
  for (const [re, id] of rule.byMessage) if (re.test(message)) return id;
  return rule.otherwise;
}

const baseName = (f: string): string => f.replace(/^.*\//, '');

/**
 * The CHECKS.md ID a C failure stands for, or undefined. `enclosing(file, line)` names the C function around a
 * source line (read from the built tree; guest asserts come without frames); frames from addr2line come first.
 */
export function checkIdOfFailure(test: string, f: CFailure, enclosing?: (file: string, line: number) => string | undefined): string | undefined {
  const table = FUNCTION_CHECKS[test] ?? {};
  const testFile = `${test}.c`;
  // Places in the test's own file, innermost first: the assertion itself (when it is there), then the frames.
  const places: { func: string | undefined; file: string; line: number }[] = [];
  if (baseName(f.file) === testFile) places.push({ func: enclosing?.(f.file, f.line), file: f.file, line: f.line });
  for (const fr of f.frames) if (baseName(fr.file) === testFile) places.push({ func: fr.func, file: fr.file, line: fr.line });
  for (const p of places) {
    const func = p.func ?? enclosing?.(p.file, p.line);
    if (!func || !Object.hasOwn(table, func)) continue;
    const id = applyRule(table[func]!, f.message);
    if (id !== null) return id;
  }
  // Shared helpers only (all null): say so with the first one's callers unknown.
  for (const p of places) {
    const func = p.func ?? enclosing?.(p.file, p.line);
    if (func && Object.hasOwn(table, func)) return `${test}:${func}`;
  }
  for (const fr of [{ func: enclosing?.(f.file, f.line) ?? '' }, ...f.frames]) if (Object.hasOwn(LIB_CHECKS, fr.func)) return LIB_CHECKS[fr.func];
  return undefined;
}

/**
 * The name of the C function whose body holds `line` (1-based) of `source`: the nearest line above it that starts
 * a function definition at column 0 (`static void name(`, `int main(`), or undefined.
 */
export function enclosingFunction(source: string, line: number): string | undefined {
  const lines = source.split('\n');
  for (let i = Math.min(line, lines.length) - 1; i >= 0; i--) {
    const l = lines[i]!;
    if (/^}/.test(l) && i < line - 1) {
      // Closing brace of an earlier function: the line is outside any function body.
      return undefined;
    }
    const m =
      /^(?:static\s+|inline\s+|noinline\s+|__attribute__\(\([^)]*\)\)\s+)*(?:const\s+|struct\s+|unsigned\s+|enum\s+)*[A-Za-z_]\w*[\s*]+\**([A-Za-z_]\w*)\s*\(/.exec(
        l,
      );
    if (m && !/;\s*$/.test(l) && !/^(?:return|else|if|for|while|switch)\b/.test(l)) return m[1];
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// Ports: KTAP

export interface KtapTest {
  n: number;
  name: string;
  ok: boolean;
  skip: boolean;
  /** The directive after `#` (SKIP reason, TIMEOUT ...). */
  directive: string;
  /** The check ID the test's name starts with (GM-7, SR-6, GM-2'), or undefined. */
  id: string | undefined;
  /** The `# ` diagnostic lines printed just before the result line. */
  diagnostic: string[];
}

export interface Ktap {
  /** `1..N`, or undefined when no plan was printed. */
  plan: number | undefined;
  /** Reason of `1..0 # SKIP reason`. */
  skipAll: string | undefined;
  tests: KtapTest[];
}

// GM-7, GM-2', SR-6a, SR-S1, PC-G5, and ranges: PF-1..PF-6, PC-G1..G4.
const ID_RE = /^([A-Z]{2}-[SG]?\d+[a-z]?'?(?:\.\.(?:[A-Z]{2}-)?[SG]?\d+)?)/;

/** The check ID a port's test name starts with. */
export function checkIdOfName(name: string): string | undefined {
  return ID_RE.exec(name.trim())?.[1];
}

/** Top-level KTAP of one port (nested subtests, indented, are ignored). */
export function parseKtap(output: string): Ktap {
  const res: Ktap = { plan: undefined, skipAll: undefined, tests: [] };
  let diag: string[] = [];
  for (const raw of output.split('\n')) {
    const line = raw.replace(/\r$/, '');
    let m = /^1\.\.(\d+)(?:\s*#\s*SKIP\s*-?\s*(.*))?$/.exec(line);
    if (m) {
      res.plan = Number(m[1]);
      if (m[2] !== undefined || res.plan === 0) res.skipAll = (m[2] ?? '').trim();
      continue;
    }
    // The directive starts at the first " # " ("#GP" inside a name is not one).
    m = /^(not ok|ok) (\d+)(?: -)?(?: (.*?))?(?:\s+#\s+(.*))?$/.exec(line);
    if (m) {
      const directive = (m[4] ?? '').trim();
      const name = (m[3] ?? '').trim();
      res.tests.push({ n: Number(m[2]), name, ok: m[1] === 'ok', skip: /^SKIP\b/i.test(directive), directive, id: checkIdOfName(name), diagnostic: diag });
      diag = [];
      continue;
    }
    if (line.startsWith('# ') && !line.startsWith('# Totals')) diag.push(line.slice(2));
    else if (line.trim() === '' || /^TAP version/.test(line)) continue;
  }
  return res;
}

// ---------------------------------------------------------------------------
// Results

export type Kind = 'pass' | 'fail' | 'skip' | 'hang' | 'missing';

export interface CResult {
  kind: Kind;
  /** fail: the CHECKS.md ID, when the failure maps to one. */
  check?: string;
  /** fail: file:line of the assertion; crash: the signal or exit code. */
  where?: string;
  message?: string;
  /** skip: the library refused (e.g. no KVM_SET_USER_MEMORY_REGION2), not the test's own TEST_REQUIRE. */
  skipByLibrary?: boolean;
  /** fail: the test's own timer ended it (SIGALRM): a time limit reached, not a verdict on the kernel. */
  outOfTime?: boolean;
  /** Short text for the table. */
  text: string;
}

export interface PortResult {
  kind: Kind;
  failed: string[];
  /** IDs the port skipped inside an otherwise running file (e.g. GM-12 on one NUMA node). */
  skipped: string[];
  text: string;
}

const oneLine = (s: string, max = 90): string => {
  const l = s.replace(/\s+/g, ' ').trim();
  return l.length > max ? `${l.slice(0, max - 1)}…` : l;
};

function hangText(r: RunRecord, where?: { check: string; line: string }): string {
  return `hang${where ? ` in ${where.check} ("${oneLine(where.line, 50)}")` : ''}, killed after ${r.timeoutS} s${r.unkillable ? ' (did not die: stuck in the kernel)' : ''}`;
}

/** Classifies one C selftest run (KSFT_PASS 0, KSFT_SKIP 4, TEST_ASSERT 254). */
export function classifyC(test: string, r: RunRecord | undefined, enclosing?: (file: string, line: number) => string | undefined): CResult {
  if (!r) return { kind: 'missing', text: 'not built' };
  if (r.timedOut) {
    const where = hangPhase(test, r.output);
    return { kind: 'hang', ...(where && { check: where.check }), text: hangText(r, where) };
  }
  const failure = parseCFailure(r.output);
  if (failure) {
    const check = checkIdOfFailure(test, failure, enclosing);
    const where = `${baseName(failure.file)}:${failure.line}`;
    const msg = failure.message || failure.expr;
    return {
      kind: 'fail',
      ...(check !== undefined && { check }),
      where,
      message: msg,
      text: `fail ${check ?? '(unmapped)'} at ${where}: ${oneLine(msg, 70)}${failure.errno ? ` (errno ${failure.errno})` : ''}`,
    };
  }
  if (r.exitCode === 0) return { kind: 'pass', text: 'pass' };
  // memslot_perf_test's host/guest sync runs under alarm(): a guest that does not answer in time is SIGALRM (MP-4).
  if (r.signal === 'SIGALRM' || r.exitCode === 142) {
    const phase = [...r.output.matchAll(/^Testing (.+?) performance/gm)].pop()?.[1];
    return {
      kind: 'fail',
      check: test === 'memslot_perf_test' ? 'MP-4' : 'SIGALRM',
      where: 'SIGALRM',
      outOfTime: true,
      text: `fail ${test === 'memslot_perf_test' ? 'MP-4' : ''} (SIGALRM: the guest did not answer the host in time${phase ? ` in the ${phase} test` : ''})`.replace(
        'fail  (',
        'fail (',
      ),
    };
  }
  if (r.exitCode === 4) {
    const why = parseCSkip(r.output);
    // TEST_REQUIRE in the test prints "Requirement not met: <expr>"; a library requirement says something else
    // ("KVM selftests now require KVM_SET_USER_MEMORY_REGION2 ...", "Cannot open /dev/kvm").
    const byLibrary = why !== undefined && !/^Requirement not met/.test(why);
    return { kind: 'skip', ...(byLibrary && { skipByLibrary: true }), text: `skip${why ? `: ${oneLine(why, 70)}` : ''}` };
  }
  const how = r.signal ? `killed by ${r.signal}` : `exit ${r.exitCode}`;
  return { kind: 'fail', where: how, text: `fail (${how}, no assertion block)` };
}

/**
 * The check IDs a failed port test stands for: its name's ID, or, when that is a range (PF-1..PF-6), the IDs within
 * it that its diagnostic names ("PF-5 kernel defect: ..."), or the check of the same test its error names first
 * (memslot_perf_test's RW test, MP-7, failing "Error: MP-4 the guest did not answer ...": the C test's SIGALRM).
 */
export function failedIds(t: KtapTest): string[] {
  const id = t.id ?? `#${t.n}`;
  if (!t.id?.includes('..')) {
    const fam = t.id?.slice(0, 3);
    for (const d of t.diagnostic) {
      const m = /\bError: ([A-Z]{2}-[SG]?\d+[a-z]?'?)\s/.exec(d);
      if (m && fam !== undefined && m[1]!.startsWith(fam)) return [m[1]!];
    }
    return [id];
  }
  const named = new Set<string>();
  for (const d of t.diagnostic) {
    for (const m of d.matchAll(/(?<!\.\.)\b([A-Z]{2}-[SG]?\d+[a-z]?'?)(?!\.\.)\b/g))
      if (sameCheck(m[1]!, t.id) && !t.id.startsWith(`${m[1]}..`)) named.add(m[1]!);
  }
  return named.size ? [...named] : [id];
}

/** Classifies one port run (kselftest exit codes; the failing checks from `not ok` lines). */
export function classifyPort(r: RunRecord | undefined): PortResult {
  if (!r) return { kind: 'missing', failed: [], skipped: [], text: 'no port yet' };
  const k = parseKtap(r.output);
  const failed = [...new Set(k.tests.filter((t) => !t.ok).flatMap(failedIds))];
  // A check counts as skipped only when none of its instances ran (SR-3 v1 ran on 6.1 while SR-3 v2 skipped).
  const ran = new Set(k.tests.filter((t) => !t.skip).map((t) => t.id ?? `#${t.n}`));
  const skipped = [...new Set(k.tests.filter((t) => t.ok && t.skip).map((t) => t.id ?? `#${t.n}`))].filter((id) => !ran.has(id));
  if (r.timedOut) return { kind: 'hang', failed, skipped, text: `${hangText(r)}${failed.length ? `; not ok: ${failed.join(', ')}` : ''}` };
  if (k.skipAll !== undefined && k.tests.length === 0) return { kind: 'skip', failed, skipped, text: `skip: ${oneLine(k.skipAll, 70)}` };
  if (failed.length > 0) return { kind: 'fail', failed, skipped, text: `fail ${failed.join(', ')}` };
  if (r.exitCode === 0) return { kind: 'pass', failed, skipped, text: `pass${skipped.length ? ` (skipped ${skipped.join(', ')})` : ''}` };
  if (r.exitCode === 4) return { kind: 'skip', failed, skipped, text: `skip (every test: ${skipped.join(', ')})` };
  const how = r.signal ? `killed by ${r.signal}` : `exit ${r.exitCode}`;
  return { kind: 'fail', failed, skipped, text: `fail (${how}${k.tests.length ? '' : ', no KTAP result'})` };
}

export type Agreement = 'agree' | 'port goes further' | 'disagree' | '—';

/** Checks one C source series lacks (CHECKS.md tags [7.3] / [6.12]): a port failing only these goes further. */
export const CHECKS_NOT_IN: Readonly<Record<string, readonly string[]>> = {
  '6.12': [
    "GM-2'",
    "GM-5'",
    'GM-9',
    'GM-10',
    'GM-11',
    'GM-12',
    'GM-13',
    'GM-14',
    'GM-15',
    'GM-16',
    'GM-17',
    'GM-S4',
    'GM-S5',
    'SR-2',
    'SR-6a',
    'SR-6b',
    'PF-5',
    'VT-S1',
    'VT-1',
    'L-8',
  ],
  '7.3': ['GM-S3', 'GM-5'],
};

function notInBuild(id: string, build: string): boolean {
  return (CHECKS_NOT_IN[build] ?? []).includes(id);
}

/** One ID or range as family + number span: GM-2' -> GM- 2..2; PF-2..PF-5 -> PF- 2..5; PC-G1..G4 -> PC-G 1..4; SR-6a -> SR- 6..6. */
function idSpan(id: string): { fam: string; lo: number; hi: number } | undefined {
  const m = /^([A-Z]{2}-[SG]?)(\d+)[a-z]?'?(?:\.\.(?:[A-Z]{2}-)?[SG]?(\d+)[a-z]?'?)?$/.exec(id.trim());
  if (!m) return undefined;
  return { fam: m[1]!, lo: Number(m[2]), hi: Number(m[3] ?? m[2]) };
}

/**
 * True if a port ID and a C ID name the same check: GM-7 = GM-7; GM-2' = GM-2; SR-6 covers SR-6a; GM-1/GM-2 covers
 * GM-2; ranges on either side (PF-2..PF-5, the port's PF-1..PF-6) match what they overlap.
 */
export function sameCheck(portId: string, cId: string): boolean {
  const ps = portId.split('/').map(idSpan);
  const cs = cId.split('/').map(idSpan);
  return ps.some((p) => cs.some((c) => !!p && !!c && p.fam === c.fam && p.lo <= c.hi && c.lo <= p.hi));
}

/**
 * The progress lines (pr_info) the C tests print before each phase, and the check a hang after that line is in.
 * The last one printed before a hang names where the test hung.
 */
export const PHASE_CHECKS: Readonly<Record<string, [RegExp, string][]>> = {
  set_memory_region_test: [
    [/^Testing KVM_RUN with zero added memory regions/, 'SR-1'],
    [/^Testing MMIO during vectoring/, 'SR-2'],
    [/^Allowed number of memory slots|^Adding slots/, 'SR-4'],
    [/^Testing ADD of KVM_MEM_GUEST_MEMFD/, 'SR-5'],
    [/^Testing ADD of overlapping/, 'SR-6'],
    [/^Testing MOVE of in-use region/, 'SR-7'],
    [/^Testing DELETE of in-use region/, 'SR-8'],
  ],
  memslot_perf_test: [
    [/^Testing (?:map|unmap|unmap chunked) performance/, 'MP-5'],
    [/^Testing move (?:active|inactive) area performance/, 'MP-6'],
    [/^Testing RW performance/, 'MP-7'],
  ],
  pre_fault_memory_test: [[/^Skipping tests for vm_type/, 'PF-0']],
};

/** The check a hung C test was in, from its last progress line, and that line. */
export function hangPhase(test: string, output: string): { check: string; line: string } | undefined {
  const table = PHASE_CHECKS[test] ?? [];
  let found: { check: string; line: string } | undefined;
  for (const raw of output.split('\n')) {
    const line = raw.trim();
    for (const [re, check] of table) if (re.test(line)) found = { check, line };
  }
  return found;
}

/**
 * The agreement of a C run and its port on one kernel:
 * - agree: same outcome (pass/pass, skip/skip, hang/hang, or both fail and the port's failures include the C check);
 * - port goes further: the C test stopped (first failed assertion, or a hang) and the port reports that check and
 *   more, or names the check where the C test hangs;
 * - disagree: anything else (one passes where the other fails, skips where the other runs, a different check).
 */
export function agreement(c: CResult, p: PortResult, build?: string): Agreement {
  if (c.kind === 'missing' || p.kind === 'missing') return '—';
  // The C test passed; the port failed only checks this C build does not make (a newer form, e.g. 7.3's PF-5 race).
  if (c.kind === 'pass' && p.kind === 'fail' && build !== undefined && p.failed.length > 0 && p.failed.every((id) => notInBuild(id, build))) {
    return 'port goes further';
  }
  // The C library gave up (a requirement of its own, not the test's), the port ran what the kernel offers.
  if (c.kind === 'skip' && c.skipByLibrary && (p.kind === 'pass' || p.kind === 'fail')) return 'port goes further';
  if (c.kind === p.kind && c.kind !== 'fail') return 'agree';
  // The C test ran out of its own time (memslot_perf_test's alarm() under QEMU TCG, on the edge of 10 s in the RW
  // test) and the port, with the same limit, finished: like a hang the port got past.
  if (c.kind === 'fail' && c.outOfTime && p.kind === 'pass') return 'port goes further';
  // A hang stops the C test; a port that reports a failure, or skips (with its reason) the check the C test hung in
  // and finishes the rest, goes further.
  if (c.kind === 'hang') {
    if (p.kind === 'fail') return 'port goes further';
    if (p.kind === 'pass' && c.check !== undefined && p.skipped.some((id) => sameCheck(id, c.check!))) return 'port goes further';
    return 'disagree';
  }
  if (c.kind === 'fail' && p.kind === 'fail') {
    if (c.check === undefined) return 'agree';
    const hit = p.failed.some((id) => sameCheck(id, c.check!));
    if (!hit) return 'disagree';
    return p.failed.some((id) => !sameCheck(id, c.check!)) ? 'port goes further' : 'agree';
  }
  return 'disagree';
}

// ---------------------------------------------------------------------------
// Table

export interface Row {
  kernel: string;
  test: string;
  build: string;
  c: CResult;
  port: PortResult;
  agreement: Agreement;
  cWallMs: number | undefined;
  portWallMs: number | undefined;
}

export function makeRow(kernel: string, test: string, build: string, c: CResult, port: PortResult, cWallMs?: number, portWallMs?: number): Row {
  return { kernel, test, build, c, port, agreement: agreement(c, port, build), cWallMs, portWallMs };
}

const secs = (ms: number | undefined): string => (ms === undefined ? '—' : `${(ms / 1000).toFixed(2)} s`);

/** port / C wall time, e.g. "3.4x", or — when either is missing. */
export function ratio(cMs: number | undefined, pMs: number | undefined): string {
  if (cMs === undefined || pMs === undefined || cMs <= 0) return '—';
  return `${(pMs / cMs).toFixed(1)}x`;
}

export const COLUMNS = ['test', 'C build', 'C result', 'port result', 'agreement', 'C time', 'port time', 'port/C'];

export function rowCells(r: Row): string[] {
  return [r.test, r.build, r.c.text, r.port.text, r.agreement, secs(r.cWallMs), secs(r.portWallMs), ratio(r.cWallMs, r.portWallMs)];
}

const mdEscape = (s: string): string => s.replace(/\|/g, '\\|');

/** A Markdown table: the head, its separator, a line per row (cells' `|` escaped). */
export function markdownTable(head: readonly string[], body: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]): string => `| ${cells.map(mdEscape).join(' | ')} |`;
  return [line(head), `| ${head.map(() => '---').join(' | ')} |`, ...body.map(line)].join('\n');
}

/** A plain-text table for the terminal (columns padded, as the CLI's tables; long result texts are not cut). */
export function textTable(head: readonly string[], body: readonly (readonly string[])[]): string {
  return alignColumns([[...head], ...body.map((r) => [...r])]).join('\n');
}

export function renderMarkdown(rows: Row[]): string {
  return markdownTable(COLUMNS, rows.map(rowCells));
}

export function renderText(rows: Row[]): string {
  return textTable(COLUMNS, rows.map(rowCells));
}

// ---------------------------------------------------------------------------
// memslot_perf_test's figures: the C test prints them with pr_info, the port
// as `# ` diagnostics with the same words, so one parser reads both.

/** One phase's figures as printed ("Testing map performance ..." up to the next phase). */
export interface PerfFigures {
  /** The phase as the test names it: map, unmap, unmap chunked, move active area, move inactive area, RW. */
  phase: string;
  /** "Best runtime result was Xs per iteration (with N iterations)". */
  bestIterS?: number;
  bestIterations?: number;
  /** "Done N iterations, avg Xs each" (the last run's). */
  avgIterS?: number;
  /** "Test took Xs for slot setup + ..." (the last run's). */
  slotSetupS?: number;
}

/** The figures of every phase in a memslot_perf_test output (C or port), in the order printed. */
export function parsePerfFigures(output: string): PerfFigures[] {
  const out: PerfFigures[] = [];
  let cur: PerfFigures | undefined;
  for (const raw of output.split('\n')) {
    const line = raw.replace(/^#\s?/, '').trim();
    let m = /^Testing (.+?) performance with \d+ runs?, [\d.]+ seconds? each/.exec(line);
    if (m) {
      cur = { phase: m[1]! };
      out.push(cur);
      continue;
    }
    if (!cur) continue;
    if ((m = /^Best runtime result was ([\d.]+)s per iteration \(with (\d+) iterations\)/.exec(line))) {
      cur.bestIterS = Number(m[1]);
      cur.bestIterations = Number(m[2]);
    } else if ((m = /^Done (\d+) iterations, avg ([\d.]+)s each/.exec(line))) cur.avgIterS = Number(m[2]);
    else if ((m = /^Test took ([\d.]+)s for slot setup/.exec(line))) cur.slotSetupS = Number(m[1]);
  }
  return out;
}

/** One row of the figures table: a phase, the C builds' best per-iteration times and the port's. */
export interface PerfRow {
  phase: string;
  /** Per C build ('6.12', '7.3'): best seconds per iteration and iterations, if the run printed them. */
  c: Record<string, { iterS: number; iterations: number } | undefined>;
  port: { iterS: number; iterations: number } | undefined;
}

/** The best (least) per-iteration time among a phase's figures: several runs' outputs may be concatenated. */
function best(fs: PerfFigures[], phase: string): { iterS: number; iterations: number } | undefined {
  let b: { iterS: number; iterations: number } | undefined;
  for (const f of fs) {
    if (f.phase !== phase || f.bestIterS === undefined) continue;
    if (b === undefined || f.bestIterS < b.iterS) b = { iterS: f.bestIterS, iterations: f.bestIterations ?? 0 };
  }
  return b;
}

/**
 * Phases in the order of the port's output, then any the C runs printed that
 * the port did not. An output may hold several runs (concatenated): each
 * phase then shows its best run, as the C test's own "Best runtime result".
 */
export function perfRows(cOutputs: Record<string, string | undefined>, portOutput: string | undefined): PerfRow[] {
  const c = Object.fromEntries(Object.entries(cOutputs).map(([b, o]) => [b, o === undefined ? [] : parsePerfFigures(o)]));
  const port = portOutput === undefined ? [] : parsePerfFigures(portOutput);
  const phases = [...new Set([...port.map((f) => f.phase), ...Object.values(c).flatMap((fs) => fs.map((f) => f.phase))])];
  return phases.map((phase) => ({
    phase,
    c: Object.fromEntries(Object.entries(c).map(([b, fs]) => [b, best(fs, phase)])),
    port: best(port, phase),
  }));
}

const perIter = (v: { iterS: number; iterations: number } | undefined): string =>
  v === undefined ? '—' : `${(v.iterS * 1000).toFixed(v.iterS < 0.01 ? 3 : 2)} ms (${v.iterations})`;

/** Columns: phase, each build's C figure, the port's, and port/C against each build. */
export function perfCells(rows: PerfRow[], builds: readonly string[]): { head: string[]; body: string[][] } {
  const head = ['phase', ...builds.map((b) => `C ${b} best/iteration (n)`), 'port best/iteration (n)', ...builds.map((b) => `port/C ${b}`)];
  const body = rows.map((r) => [
    r.phase,
    ...builds.map((b) => perIter(r.c[b])),
    perIter(r.port),
    ...builds.map((b) => (r.c[b] && r.port && r.c[b]!.iterS > 0 ? `${(r.port.iterS / r.c[b]!.iterS).toFixed(2)}x` : '—')),
  ]);
  return { head, body };
}

export function renderPerfMarkdown(rows: PerfRow[], builds: readonly string[]): string {
  const { head, body } = perfCells(rows, builds);
  return markdownTable(head, body);
}

export function renderPerfText(rows: PerfRow[], builds: readonly string[]): string {
  const { head, body } = perfCells(rows, builds);
  return textTable(head, body);
}
