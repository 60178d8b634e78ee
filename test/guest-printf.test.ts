// The host side of the guests' printf (GuestIo.printf): formatGuestPrintf()
// must print what C's printf prints for the same format and the same 64-bit
// values, so the table below is checked against a C program built here with
// the system compiler, and the guest-side checks (unsupported conversions,
// the value count) are assembly-time errors. The guest round trip itself is
// in guest-helpers.test.ts.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { Assembler, AsmError, formatGuestPrintf, GuestIo } from '../lib/index.js';

// [format, values]: C receives each value with the type the length modifier names.
const CASES: [string, bigint[]][] = [
  ['%d %i %u', [0xffff_fffbn, 7n, 0xffff_ffffn]],
  ['%ld %lu %lld', [0xffff_ffff_ffff_fffbn, 0xffff_ffff_ffff_ffffn, 1n << 62n]],
  ['%x %X %#x %#X %#x', [0xabcn, 0xabcn, 0xabcn, 0xabcn, 0n]],
  ['%lx %#lx %016lx %-8lx|', [0xdead_beef_cafen, 1n, 0x1234n, 0xffn]],
  ['%o %#o %#lo', [8n, 8n, 0n]],
  ['%5d|%-5d|%05d|%+d|% d|%+d', [42n, 42n, 0xffff_ffd6n, 3n, 3n, 0xffff_fffdn]],
  ['%.3d %8.3x %-8.3u|', [7n, 0xan, 5n]],
  ['%hd %hu %hhd %hhx', [0x1_8000n, 0xf_ffffn, 0x1ffn, 0x1abn]],
  ['%zu %jd %td', [0xffff_ffff_ffff_ffffn, 0x8000_0000_0000_0000n, 12n]],
  ['%c%c%c', [0x4bn, 0x56n, 0x14dn]],
  ['%p', [0xffff_8000_0000_1000n]],
  ['100%% %lu%%', [99n]],
];

function cType(conv: string): string {
  const m = /%[-+ #0]*\d*(?:\.\d+)?(hh|h|ll|l|z|j|t)?([diuxXocp])/.exec(conv)!;
  const signed = 'di'.includes(m[2]!);
  if (m[2] === 'p') return 'void *';
  if (m[2] === 'c') return 'int';
  switch (m[1]) {
    case 'hh':
      return signed ? 'signed char' : 'unsigned char';
    case 'h':
      return signed ? 'short' : 'unsigned short';
    case undefined:
      return signed ? 'int' : 'unsigned int';
    default:
      return signed ? 'long long' : 'unsigned long long';
  }
}

function cPrintf(): string[] {
  const lines = CASES.map(([fmt, values]) => {
    const convs = [...fmt.matchAll(/%[-+ #0]*\d*(?:\.\d+)?(?:hh|h|ll|l|z|j|t)?[diuxXocp]/g)].map((m) => m[0]);
    const args = values.map((v, i) => `(${cType(convs[i]!)})(unsigned long long)0x${v.toString(16)}ULL`);
    return `  printf(${JSON.stringify(fmt)}${args.map((a) => `, ${a}`).join('')}); putchar('\\n');`;
  });
  const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-printf-'));
  try {
    writeFileSync(join(dir, 'p.c'), `#include <stdio.h>\nint main(void) {\n${lines.join('\n')}\n  return 0;\n}\n`);
    execFileSync('cc', ['-w', '-o', join(dir, 'p'), join(dir, 'p.c')]);
    return execFileSync(join(dir, 'p'), { encoding: 'latin1' }).split('\n').slice(0, CASES.length);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('formatGuestPrintf', () => {
  test('prints what C printf prints for the same formats and values', () => {
    const c = cPrintf();
    expect(CASES.map(([f, v]) => formatGuestPrintf(f, v))).toEqual(c);
  });

  test('GuestIo.printf: unsupported conversions, a wrong value count and non-64-bit code are assembly errors', () => {
    const io = new GuestIo(new Assembler({ bits: 64, origin: 0x10000 }));
    expect(() => io.printf('%s', 1)).toThrow(AsmError);
    expect(() => io.printf('%f', 1)).toThrow(/unsupported conversion/);
    expect(() => io.printf('%d %d', 1)).toThrow(/takes 2 value\(s\), got 1/);
    expect(() => io.printf('%d%d%d%d%d', 1, 2, 3, 4, 5)).toThrow(/at most 4/);
    expect(() => io.printf('%d', 1)).not.toThrow();
    expect(io.formats).toEqual(['%d']);
    const io16 = new GuestIo(new Assembler({ bits: 16, origin: 0x1000 }));
    expect(() => io16.printf('x')).toThrow(/64-bit code/);
    expect(() => io16.assertEq('ax', 1)).toThrow(/64-bit code/);
  });

  test('assertCmp: an unknown operator and a narrow register are assembly errors', () => {
    const io = new GuestIo(new Assembler({ bits: 64, origin: 0x10000 }));
    expect(() => io.assertCmp('rax', '=~' as never, 1)).toThrow(/unknown operator/);
    expect(() => io.assertEq('eax', 1)).toThrow(/64-bit register/);
    expect(io.asserts.length).toBe(0);
  });
});
