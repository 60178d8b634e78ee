// The pure parts of tools/selftests-c (C failure blocks, KTAP, check IDs,
// agreement, tables): no /dev/kvm, no VM, no built C tests needed.
import { describe, expect, test } from 'vitest';
import {
  agreement,
  checkIdOfFailure,
  checkIdOfName,
  classifyC,
  classifyPort,
  enclosingFunction,
  makeRow,
  parseCFailure,
  parseCSkip,
  parseKtap,
  parsePerfFigures,
  perfRows,
  ratio,
  renderMarkdown,
  renderPerfMarkdown,
  renderPerfText,
  renderText,
  type RunRecord,
  sameCheck,
} from '../tools/selftests-c/parse.js';

const run = (output: string, exitCode: number | null = 0, extra: Partial<RunRecord> = {}): RunRecord => ({
  exitCode,
  signal: null,
  timedOut: false,
  timeoutS: 150,
  wallMs: 1234,
  output,
  ...extra,
});

// What 7.3's guest_memfd_test prints on a kernel that accepts the overflowing offset (test_assert + addr2line | cat -n).
const GM9_FAILURE = `Random seed: 0x6b8b4567

==== Test Assertion Failure ====
  guest_memfd_test.c:355: r && errno == EINVAL
  pid=321 tid=321 errno=0 - Success
     1\t0x0000000000402e1f: test_invalid_binding at guest_memfd_test.c:355
     2\t0x0000000000403410: __test_guest_memfd at guest_memfd_test.c:462
     3\t (inlined by) test_guest_memfd at guest_memfd_test.c:486
     4\t0x0000000000402284: main at guest_memfd_test.c:573
     5\t0x00007f3c3a2461c9: ?? ??:0
     6\t0x0000000000402b80: _start at ??:?
  Memslot with out-of-range offset+size should fail
`;

// A guest assert (ucall ABORT) reported by the host: the file:line is the guest code's; the frames are the host's.
const GUEST_FAILURE = `
==== Test Assertion Failure ====
  x86/private_mem_conversions_test.c:52: !memcmp(mem, pattern, size)
  pid=77 tid=78 errno=4 - Interrupted system call
     1\t0x0000000000402a11: __test_mem_conversions at private_mem_conversions_test.c:345
     2\t0x00007f0000000000: ?? ??:0
  Guest expected 0x11 at offset 0 (gpa 0x100000000), got 0x0
`;

const LIB_FAILURE = `
==== Test Assertion Failure ====
  lib/kvm_util.c:1034: !ret
  pid=9 tid=9 errno=22 - Invalid argument
     1\t0x0000000000409d2e: vm_mem_add at kvm_util.c:1034 (discriminator 4)
     2\t0x0000000000401e77: main at memslot_perf_test.c:1120
  KVM_SET_USER_MEMORY_REGION2 failed, rc: -1 errno: 22
`;

describe('C failure blocks', () => {
  test('file:line, expression, errno, frames (inlined ones too) and the message', () => {
    const f = parseCFailure(GM9_FAILURE)!;
    expect(f.file).toBe('guest_memfd_test.c');
    expect(f.line).toBe(355);
    expect(f.expr).toBe('r && errno == EINVAL');
    expect(f.errno).toBe(0);
    expect(f.frames.map((x) => x.func)).toEqual(['test_invalid_binding', '__test_guest_memfd', 'test_guest_memfd', 'main']);
    expect(f.frames[2]!.line).toBe(486);
    expect(f.message).toBe('Memslot with out-of-range offset+size should fail');
  });

  test('no block: undefined; skip lines of both kselftest spellings', () => {
    expect(parseCFailure('Random seed: 1\nall good\n')).toBeUndefined();
    expect(parseCSkip('Random seed: 0x1\n1..0 # SKIP - Cannot open /dev/kvm: No such file or directory\n')).toBe(
      'Cannot open /dev/kvm: No such file or directory',
    );
    expect(parseCSkip('1..0 # SKIP - Requirement not met: kvm_has_cap(KVM_CAP_VM_TYPES)\n')).toMatch(/^Requirement not met/);
  });

  test('a failure maps to its CHECKS.md ID through the frames, the caller of a shared helper, or the message', () => {
    expect(checkIdOfFailure('guest_memfd_test', parseCFailure(GM9_FAILURE)!)).toBe('GM-9');
    // test_fault_sigbus is shared by GM-10 and GM-14: the caller decides.
    const sigbus = parseCFailure(
      GM9_FAILURE.replace('test_invalid_binding at guest_memfd_test.c:355', 'test_fault_sigbus at guest_memfd_test.c:240').replace(
        '__test_guest_memfd at guest_memfd_test.c:462',
        'test_fault_overflow at guest_memfd_test.c:251',
      ),
    )!;
    expect(checkIdOfFailure('guest_memfd_test', sigbus)).toBe('GM-14');
    // 6.12's test_create_guest_memfd_invalid holds GM-1 and GM-2: the message tells them apart.
    const gm2 = parseCFailure(
      GM9_FAILURE.replace('test_invalid_binding', 'test_create_guest_memfd_invalid').replace(
        'Memslot with out-of-range offset+size should fail',
        "guest_memfd() with flag '0x1' should fail with EINVAL",
      ),
    )!;
    expect(checkIdOfFailure('guest_memfd_test', gm2)).toBe('GM-2');
    // A library assert: the first frame in the test's file.
    expect(checkIdOfFailure('memslot_perf_test', parseCFailure(LIB_FAILURE)!)).toBe('MP-1');
    expect(checkIdOfFailure('set_memory_region_test', parseCFailure(LIB_FAILURE)!)).toBe('L-2');
  });

  test('a guest assert is placed by the source line around it', () => {
    const src = [
      '// SPDX',
      'static void memcmp_g(u64 gpa, u8 pattern, u64 size)',
      '{',
      '\tu8 *mem = (u8 *)gpa;',
      '\tfor (i = 0; i < size; i++)',
      '\t\t__GUEST_ASSERT(mem[i] == pattern, "Guest expected");',
      '}',
      '',
      'static void guest_test_punch_hole(u64 base_gpa, bool precise)',
      '{',
      '\tif (precise)',
      '\t\tmemcmp_g(base_gpa, 0, 4096);',
      '}',
    ].join('\n');
    expect(enclosingFunction(src, 6)).toBe('memcmp_g');
    expect(enclosingFunction(src, 12)).toBe('guest_test_punch_hole');
    expect(enclosingFunction(src, 8)).toBeUndefined();
    const f = parseCFailure(GUEST_FAILURE)!;
    const lookup = (file: string, line: number): string | undefined =>
      file.endsWith('private_mem_conversions_test.c') && line === 52 ? 'guest_punch_hole' : undefined;
    expect(checkIdOfFailure('private_mem_conversions_test', f, lookup)).toBe('PC-G5');
    // Without the source: the host frame.
    expect(checkIdOfFailure('private_mem_conversions_test', f)).toBe('PC-5/PC-6');
  });

  test('classification: pass, skip, fail at a check, crash, hang', () => {
    expect(classifyC('vm_types_test', run('Random seed: 1\n', 0)).kind).toBe('pass');
    expect(classifyC('vm_types_test', run('1..0 # SKIP - Requirement not met: x\n', 4))).toMatchObject({ kind: 'skip', text: 'skip: Requirement not met: x' });
    const c = classifyC('guest_memfd_test', run(GM9_FAILURE, 254));
    expect(c).toMatchObject({ kind: 'fail', check: 'GM-9', where: 'guest_memfd_test.c:355' });
    expect(c.text).toMatch(/^fail GM-9 at guest_memfd_test.c:355: Memslot with out-of-range/);
    expect(classifyC('vm_types_test', run('', null, { signal: 'SIGSEGV' }))).toMatchObject({
      kind: 'fail',
      text: 'fail (killed by SIGSEGV, no assertion block)',
    });
    expect(classifyC('pre_fault_memory_test', run('', null, { timedOut: true, timeoutS: 90, signal: 'SIGKILL' })).text).toBe('hang, killed after 90 s');
    expect(classifyC('vm_types_test', undefined).kind).toBe('missing');
    const alarm = classifyC('memslot_perf_test', run('Testing map performance with 1 runs\nTesting RW performance with 1 runs\n', null, { signal: 'SIGALRM' }));
    expect(alarm).toMatchObject({ kind: 'fail', check: 'MP-4' });
    expect(alarm.text).toBe('fail MP-4 (SIGALRM: the guest did not answer the host in time in the RW test)');
  });
});

const PORT_OUT = `TAP version 13
1..5
ok 1 GM-1 sizes 1..4095 are EINVAL (vm type 0, flags 0)
# GM-9: expected EINVAL, got success (gmem-bind-offset-overflow)
# at selftests/guest_memfd_test.ts:200
not ok 2 GM-9 binding at offset 0x7ffffffffffff000 (vm type 0, flags 0)
ok 3 GM-12 mbind at the #GP gate # SKIP one NUMA node
    # a nested line
    not ok 1 nested is ignored
not ok 4 GM-2' flag bits (vm type 1) # TIMEOUT 1000 ms
ok 5 GM-7 fallocate table
# Totals: pass:2 fail:2 xfail:0 xpass:0 skip:1 error:0
`;

describe('port KTAP', () => {
  test('results, IDs, directives and diagnostics', () => {
    const k = parseKtap(PORT_OUT);
    expect(k.plan).toBe(5);
    expect(k.skipAll).toBeUndefined();
    expect(k.tests.map((t) => [t.n, t.id, t.ok, t.skip])).toEqual([
      [1, 'GM-1', true, false],
      [2, 'GM-9', false, false],
      [3, 'GM-12', true, true],
      [4, "GM-2'", false, false],
      [5, 'GM-7', true, false],
    ]);
    expect(k.tests[1]!.diagnostic[0]).toMatch(/gmem-bind-offset-overflow/);
    expect(k.tests[3]!.directive).toBe('TIMEOUT 1000 ms');
    expect(parseKtap('TAP version 13\n1..0 # SKIP Requirement not met: VM_TYPES\n').skipAll).toBe('Requirement not met: VM_TYPES');
    expect(checkIdOfName('PC-G5 punch hole')).toBe('PC-G5');
    expect(checkIdOfName('PF-1..PF-6 [default, shared] (7.3 form)')).toBe('PF-1..PF-6');
    expect(checkIdOfName('SR-S1 quirk')).toBe('SR-S1');
    expect(checkIdOfName('no id here')).toBeUndefined();
  });

  test('classification', () => {
    expect(classifyPort(run(PORT_OUT, 1))).toMatchObject({ kind: 'fail', failed: ['GM-9', "GM-2'"], skipped: ['GM-12'], text: "fail GM-9, GM-2'" });
    expect(classifyPort(run('TAP version 13\n1..1\nok 1 VT-1 types\n', 0))).toMatchObject({ kind: 'pass', text: 'pass' });
    expect(classifyPort(run('TAP version 13\n1..0 # SKIP Requirement not met: GUEST_MEMFD\n', 4)).kind).toBe('skip');
    expect(classifyPort(run('TAP version 13\n1..2\n', null, { timedOut: true, timeoutS: 30 })).text).toBe('hang, killed after 30 s');
    expect(classifyPort(run('Error: boom\n', 1)).text).toBe('fail (exit 1, no KTAP result)');
    expect(classifyPort(undefined)).toMatchObject({ kind: 'missing', text: 'no port yet' });
  });

  test("a failed test whose error names another check of its test stands for that check (memslot_perf_test's SIGALRM)", () => {
    const out = [
      'TAP version 13',
      '1..2',
      'ok 1 MP-6 4: move inactive area',
      '# Testing RW performance with 1 runs, 1 seconds each',
      '# MP-7 5: RW (host and guest write and check every page of 512 MiB in turn), 1 run(s) of 1 s: Error: MP-4 the guest did not answer the host within 10 s (the C test dies of SIGALRM, exit 142) in the RW test, iteration 1',
      '#     at testExecute (file:///x.js:754:23)',
      'not ok 2 MP-7 5: RW (host and guest write and check every page of 512 MiB in turn), 1 run(s) of 1 s',
    ].join('\n');
    const p = classifyPort(run(out, 1));
    expect(p).toMatchObject({ kind: 'fail', failed: ['MP-4'], text: 'fail MP-4' });
    const c = classifyC('memslot_perf_test', run('Testing RW performance with 1 runs, 1 seconds each\n', null, { signal: 'SIGALRM' }));
    expect(c.check).toBe('MP-4');
    expect(agreement(c, p)).toBe('agree');
    // The C test out of its own time, the port finished within it: the port went further, as past a hang.
    expect(c.outOfTime).toBe(true);
    expect(agreement(c, classifyPort(run('TAP version 13\n1..1\nok 1 MP-7 5: RW\n', 0)))).toBe('port goes further');
    // Another family in the error is not taken: the test's own ID stays.
    expect(classifyPort(run(out.replace('Error: MP-4', 'Error: GM-4'), 1)).failed).toEqual(['MP-7']);
  });
});

describe('agreement and the table', () => {
  const cFail = classifyC('guest_memfd_test', run(GM9_FAILURE, 254));
  const pFailGm9 = classifyPort(run('1..2\nnot ok 1 GM-9 bind\nok 2 GM-7 x\n', 1));
  const pFailMore = classifyPort(run('1..2\nnot ok 1 GM-9 bind\nnot ok 2 GM-13 mmap\n', 1));
  const pFailOther = classifyPort(run('1..1\nnot ok 1 GM-13 mmap\n', 1));
  const pPass = classifyPort(run('1..1\nok 1 GM-9 bind\n', 0));
  const pSkip = classifyPort(run('1..0 # SKIP nope\n', 4));
  const cPass = classifyC('guest_memfd_test', run('', 0));
  const cSkip = classifyC('guest_memfd_test', run('1..0 # SKIP - Requirement not met: kvm_has_cap(KVM_CAP_GUEST_MEMFD)\n', 4));
  const cHang = classifyC('pre_fault_memory_test', run('', null, { timedOut: true }));

  test('the cases', () => {
    expect(agreement(cPass, pPass)).toBe('agree');
    expect(agreement(cSkip, pSkip)).toBe('agree');
    expect(agreement(cFail, pFailGm9)).toBe('agree');
    expect(agreement(cFail, pFailMore)).toBe('port goes further');
    expect(agreement(cFail, pFailOther)).toBe('disagree');
    expect(agreement(cFail, pPass)).toBe('disagree');
    expect(agreement(cPass, pFailGm9)).toBe('disagree');
    expect(agreement(cSkip, pPass)).toBe('disagree');
    expect(agreement(cHang, classifyPort(run('1..1\nnot ok 1 PF-5 race # TIMEOUT 1 ms\n', 1)))).toBe('port goes further');
    expect(agreement(cHang, pPass)).toBe('disagree');
    expect(agreement(cPass, classifyPort(undefined))).toBe('—');
    expect(sameCheck("GM-2'", 'GM-2')).toBe(true);
    expect(sameCheck('SR-6', 'SR-6a')).toBe(true);
    expect(sameCheck('GM-2', 'GM-1/GM-2')).toBe(true);
    expect(sameCheck('GM-12', 'GM-1')).toBe(false);
    expect(sameCheck('PF-3', 'PF-2..PF-5')).toBe(true);
    expect(sameCheck('PF-6', 'PF-2..PF-5')).toBe(false);
    expect(sameCheck('PC-G2', 'PC-G1..G4')).toBe(true);
    expect(sameCheck('PC-7', 'PC-1..PC-3/PC-7')).toBe(true);
    expect(sameCheck('GM-S2', 'GM-S1..S4')).toBe(true);
    expect(sameCheck('PF-1..PF-6', 'PF-4')).toBe(true);
    expect(sameCheck('PF-1..PF-6', 'GM-4')).toBe(false);
    // Where the C test hung, from its last progress line; the port skipping that check with a reason goes further.
    const srHang = classifyC(
      'set_memory_region_test',
      run('Random seed: 1\nTesting KVM_RUN with zero added memory regions\nTesting MMIO during vectoring error handling\n', null, { timedOut: true }),
    );
    expect(srHang).toMatchObject({ kind: 'hang', check: 'SR-2' });
    expect(srHang.text).toBe('hang in SR-2 ("Testing MMIO during vectoring error handling"), killed after 150 s');
    const srPort = classifyPort(run('1..2\nok 1 SR-1 zero\nok 2 SR-2 mmio # SKIP 6.12 behaviour\n', 0));
    expect(agreement(srHang, srPort)).toBe('port goes further');
    expect(agreement(srHang, classifyPort(run('1..1\nok 1 SR-2 mmio\n', 0)))).toBe('disagree');
    // A port failing only a check the C build lacks (6.12 has no PF-5), named in the diagnostic of a range test.
    const pf = classifyPort(
      run(
        '1..2\nok 1 PF-1..PF-6 [default] (6.12 form)\n# PF-1..PF-6 [default] (7.3 form): PF-5 kernel defect: no progress\nnot ok 2 PF-1..PF-6 [default] (7.3 form)\n',
        1,
      ),
    );
    expect(pf.failed).toEqual(['PF-5']);
    expect(agreement(cPass, pf, '6.12')).toBe('port goes further');
    expect(agreement(cPass, pf, '7.3')).toBe('disagree');
    // A C skip by the library (no memslots v2 on 6.1) while the port runs the v1 checks; a TEST_REQUIRE skip must match.
    const libSkip = classifyC('set_memory_region_test', run('1..0 # SKIP - KVM selftests now require KVM_SET_USER_MEMORY_REGION2 (introduced in v6.8)\n', 4));
    expect(libSkip.skipByLibrary).toBe(true);
    expect(agreement(libSkip, pPass)).toBe('port goes further');
    expect(agreement(cSkip, pPass)).toBe('disagree');
  });

  test('rows, ratio and the two renderings', () => {
    expect(ratio(1000, 3500)).toBe('3.5x');
    expect(ratio(undefined, 3500)).toBe('—');
    const rows = [
      makeRow('7.3', 'guest_memfd_test', '7.3', cFail, pFailMore, 100, 2500),
      makeRow('7.3', 'memslot_perf_test', '6.12', cPass, classifyPort(undefined), 5000),
    ];
    const md = renderMarkdown(rows);
    expect(md.split('\n')[0]).toBe('| test | C build | C result | port result | agreement | C time | port time | port/C |');
    expect(md).toContain(
      '| guest_memfd_test | 7.3 | fail GM-9 at guest_memfd_test.c:355: Memslot with out-of-range offset+size should fail | fail GM-9, GM-13 | port goes further | 0.10 s | 2.50 s | 25.0x |',
    );
    expect(md).toContain('| memslot_perf_test | 6.12 | pass | no port yet | — | 5.00 s | — | — |');
    const txt = renderText(rows).split('\n');
    expect(txt).toHaveLength(3);
    expect(txt[0]!.startsWith('test ')).toBe(true);
  });
});

describe("memslot_perf_test's figures", () => {
  // As the C test prints them (pr_info, stdout) and as the port does (diagnostics).
  const cOut = [
    '==== Test Assertion Failure ====',
    'Testing map performance with 1 runs, 1 seconds each',
    'Test took 0.012000000s for slot setup + 1.000100000s all iterations',
    'Done 80 iterations, avg 0.012501250s each',
    'Best runtime result was 0.012501250s per iteration (with 80 iterations)',
    'Testing RW performance with 1 runs, 1 seconds each',
    'Test took 0.010000000s for slot setup + 1.5s all iterations',
    'No full loops done - too short test time or system too loaded?',
    'Best slot setup time for the whole test area was 0.010000000s',
  ].join('\n');
  const portOut = [
    'TAP version 13',
    '1..8',
    '# Testing map performance with 1 runs, 1 seconds each',
    '# Test took 0.020000000s for slot setup + 1.000000000s all iterations',
    '# Done 40 iterations, avg 0.025000000s each',
    '# Best runtime result was 0.025000000s per iteration (with 40 iterations)',
    'ok 5 MP-5 map',
    '# Testing RW performance with 1 runs, 1 seconds each',
    '# Done 2 iterations, avg 0.400000000s each',
    '# Best runtime result was 0.400000000s per iteration (with 2 iterations)',
  ].join('\n');

  test('one parser reads both spellings', () => {
    expect(parsePerfFigures(cOut)).toEqual([
      { phase: 'map', slotSetupS: 0.012, avgIterS: 0.01250125, bestIterS: 0.01250125, bestIterations: 80 },
      { phase: 'RW', slotSetupS: 0.01 },
    ]);
    expect(parsePerfFigures(portOut)).toEqual([
      { phase: 'map', slotSetupS: 0.02, avgIterS: 0.025, bestIterS: 0.025, bestIterations: 40 },
      { phase: 'RW', avgIterS: 0.4, bestIterS: 0.4, bestIterations: 2 },
    ]);
    expect(parsePerfFigures('nothing here')).toEqual([]);
  });

  test('side by side per phase: each build, the port, and port/C', () => {
    const rows = perfRows({ '6.12': cOut, '7.3': undefined }, portOut);
    expect(rows.map((r) => r.phase)).toEqual(['map', 'RW']);
    const md = renderPerfMarkdown(rows, ['6.12', '7.3']).split('\n');
    expect(md[0]).toBe('| phase | C 6.12 best/iteration (n) | C 7.3 best/iteration (n) | port best/iteration (n) | port/C 6.12 | port/C 7.3 |');
    expect(md[2]).toBe('| map | 12.50 ms (80) | — | 25.00 ms (40) | 2.00x | — |');
    // The C run did no full loop in RW: no figure, no ratio.
    expect(md[3]).toBe('| RW | — | — | 400.00 ms (2) | — | — |');
    expect(renderPerfText(rows, ['6.12', '7.3']).split('\n')).toHaveLength(3);
  });

  test('several runs in one output: each phase shows its best run', () => {
    const slower = portOut.replace(/0\.025000000s per iteration \(with 40/, '0.030000000s per iteration (with 33');
    const rows = perfRows({ '7.3': cOut }, `${slower}\n${portOut}`);
    expect(rows[0]!.port).toEqual({ iterS: 0.025, iterations: 40 });
    expect(perfRows({ '7.3': cOut }, `${portOut}\n${slower}`)[0]!.port).toEqual({ iterS: 0.025, iterations: 40 });
  });
});
