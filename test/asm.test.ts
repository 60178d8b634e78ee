// The x86 emitter (lib/x86/asm.ts) checked byte for byte against GNU as.
//
// For each mode, every case is written twice: as GNU as Intel-syntax source
// and as emitter calls. All cases of a mode go into one .s file (each after a
// `__case_N:` marker), are assembled with `as --64`, linked with ld at a fixed
// address (so label addresses used by far jumps, absolute operands and
// `.long label` resolve exactly as in our output), and split at the markers
// (addresses from nm). Each case is then assembled by the emitter at the same
// guest address and compared in its own test, so a mismatch names the case.
//
// The same source text is also what the listing must say for each
// instruction: the listing is GNU as syntax, so this checks it too.
//
// Where we deliberately differ from plain `as` (documented here and in asm.ts):
//  - `mov r64, imm`: we use the shortest correct encoding (`mov r32, imm32`
//    when the value fits in 32 unsigned bits). Plain `as` keeps the 7-byte
//    `REX.W C7 /0` form; `as -O1` does what we do, so those cases (flag O1)
//    are assembled with `as -O1`.
//  - `align(n)` with the default 0x90 fill emits single-byte NOPs; `as`
//    turns `.balign n, 0x90` in code into multi-byte NOPs, so the align cases
//    compared with `as` use another fill byte, and the 0x90 case is checked
//    without `as`.
//  - 16-bit jumps more than +-32 KiB away: `as` silently wraps them around
//    the 64 KiB segment, we throw (see the error tests).
import { describe, test, expect, beforeAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gate, needs } from './helpers.js';
import { Assembler, AsmError, mem, offset, REG8, REG8_HIGH, REG16, REG32, REG64, type Bits, type MemAddress, type MemSize, type Reg } from '../lib/x86/asm.js';

// ld and nm come with as in binutils; they are only used to place and split the output.
const binutils = gate(needs.all('binutils (as, ld, objcopy, nm) on PATH', ...['as', 'ld', 'objcopy', 'nm'].map((t) => needs.tool(t))));
const hasAs = binutils.met;

type Build = (a: Assembler) => unknown;
interface Case {
  bits: Bits;
  /** GNU as source (Intel syntax); instruction lines are also the expected listing text */
  gas: string;
  build: Build;
  /** assemble with `as -O1` (mov r64, imm: see the header) */
  O1: boolean;
  name: string;
}

const hex = (v: number | bigint): string => {
  const b = BigInt(v);
  return b < 0n ? `-0x${(-b).toString(16)}` : `0x${b.toString(16)}`;
};
const PTR: Record<MemSize, string> = { 8: 'BYTE PTR', 16: 'WORD PTR', 32: 'DWORD PTR', 64: 'QWORD PTR' };
const ALU_OPS = ['add', 'or', 'and', 'sub', 'xor', 'cmp'] as const;
const JUMPS = ['jmp', 'je', 'jne', 'jz', 'jnz', 'jl', 'jle', 'jg', 'jge', 'jb', 'jbe', 'ja', 'jae', 'js', 'jns'] as const;

// Immediates at the boundaries of each operand size (imm8 sign extension, the
// accumulator forms, signed/unsigned spellings of the same operand).
const MOV_IMM: Record<MemSize, (number | bigint)[]> = {
  8: [0, 0x7f, 0x80, 0xff, -1, -0x80],
  16: [0, 0x7f, 0x80, -0x80, -0x81, 0x7fff, 0x8000, 0xffff, -1, -0x8000],
  32: [0, 0x7f, 0x80, -0x80, -0x81, 0x7fffffff, 0x80000000, 0xffffffff, -1, -0x80000000],
  64: [
    0,
    0x7f,
    0x80,
    -0x80,
    -0x81,
    0x7fffffff,
    0x80000000,
    0xffffffff,
    2 ** 32,
    -1,
    -0x80000000,
    -0x80000001,
    0x7fffffffffffffffn,
    0xffffffffffffffffn,
    -0x8000000000000000n,
    0x123456789abcdef0n,
  ],
};
const ALU_IMM: Record<MemSize, (number | bigint)[]> = {
  8: [0, 0x7f, 0x80, 0xff, -0x80, -1],
  16: [0, 0x7f, 0x80, -0x80, -0x81, 0x7fff, 0x8000, 0xffff, -1],
  32: [0, 0x7f, 0x80, -0x80, -0x81, 0x7fffffff, 0x80000000, 0xffffffff, -1],
  64: [0, 0x7f, 0x80, -0x80, -0x81, 0x7fffffff, -0x80000000, -1, 0xffffffffffffffffn],
};

/** Address forms of each mode: [GNU as spelling, mem() address]. */
function addressForms(bits: Bits): [string, MemAddress][] {
  const f = (s: string, a: MemAddress): [string, MemAddress] => [s, a];
  const legacy16 = [
    f('[bx]', { base: 'bx' }),
    f('[bp]', { base: 'bp' }),
    f('[si]', { base: 'si' }),
    f('[di]', { base: 'di' }),
    f('[bx+si]', { base: 'bx', index: 'si' }),
    f('[bx+di]', { base: 'bx', index: 'di' }),
    f('[bp+si]', { base: 'bp', index: 'si' }),
    f('[bp+di]', { base: 'bp', index: 'di' }),
    f('[bx+0x7f]', { base: 'bx', disp: 0x7f }),
    f('[bp-0x80]', { base: 'bp', disp: -0x80 }),
    f('[si+0x80]', { base: 'si', disp: 0x80 }),
    f('[di-0x81]', { base: 'di', disp: -0x81 }),
    f('[bx+si+0x1234]', { base: 'bx', index: 'si', disp: 0x1234 }),
    f('[bp+di-0x2]', { base: 'bp', index: 'di', disp: -2 }),
  ];
  const legacy32 = [
    f('[eax]', { base: 'eax' }),
    f('[ecx]', { base: 'ecx' }),
    f('[esp]', { base: 'esp' }),
    f('[ebp]', { base: 'ebp' }),
    f('[esi]', { base: 'esi' }),
    f('[eax+0x7f]', { base: 'eax', disp: 0x7f }),
    f('[ebp-0x80]', { base: 'ebp', disp: -0x80 }),
    f('[esp+0x80]', { base: 'esp', disp: 0x80 }),
    f('[edi-0x81]', { base: 'edi', disp: -0x81 }),
    f('[ebx+0x12345678]', { base: 'ebx', disp: 0x12345678 }),
    f('[ecx+edx*4+0x10]', { base: 'ecx', index: 'edx', scale: 4, disp: 0x10 }),
    f('[esp+eax*8]', { base: 'esp', index: 'eax', scale: 8 }),
    f('[ebp+esi]', { base: 'ebp', index: 'esi' }),
    f('[edx*8]', { index: 'edx', scale: 8 }),
    f('[ebx*1+0x20]', { index: 'ebx', disp: 0x20 }),
  ];
  if (bits === 16) {
    return [f('[0x1000]', { disp: 0x1000 }), f('[0xfffe]', { disp: 0xfffe }), ...legacy16, ...legacy32.slice(0, 4), ...legacy32.slice(10, 14)];
  }
  if (bits === 32) {
    return [f('[0x1000]', { disp: 0x1000 }), f('[0xfffffff0]', { disp: 0xfffffff0 }), ...legacy32, ...legacy16.slice(0, 2), legacy16[6]!, legacy16[12]!];
  }
  return [
    f('[0x1000]', { disp: 0x1000 }),
    f('[0x7ffffff0]', { disp: 0x7ffffff0 }),
    ...REG64.map((r) => f(`[${r}]`, { base: r })),
    ...REG64.map((r) => f(`[${r}+0x10]`, { base: r, disp: 0x10 })),
    ...REG64.map((r) => f(`[${r}-0x1000]`, { base: r, disp: -0x1000 })),
    f('[rax+0x7f]', { base: 'rax', disp: 0x7f }),
    f('[rax-0x80]', { base: 'rax', disp: -0x80 }),
    f('[rax+0x80]', { base: 'rax', disp: 0x80 }),
    f('[rax-0x81]', { base: 'rax', disp: -0x81 }),
    f('[rbp+0x12345678]', { base: 'rbp', disp: 0x12345678 }),
    f('[r13-0x80000000]', { base: 'r13', disp: -0x80000000 }),
    f('[rbx+rcx*8+0x10]', { base: 'rbx', index: 'rcx', scale: 8, disp: 0x10 }),
    f('[rcx*4]', { index: 'rcx', scale: 4 }),
    f('[rcx*1]', { index: 'rcx' }),
    f('[r8+r9*4-0x8]', { base: 'r8', index: 'r9', scale: 4, disp: -8 }),
    f('[rsp+r12*2]', { base: 'rsp', index: 'r12', scale: 2 }),
    f('[r13+rbp]', { base: 'r13', index: 'rbp' }),
    f('[r12+r13*8+0x100]', { base: 'r12', index: 'r13', scale: 8, disp: 0x100 }),
    f('[r15*2+0x4]', { index: 'r15', scale: 2, disp: 4 }),
    f('[eax]', { base: 'eax' }),
    f('[eax+ebx*2+0x4]', { base: 'eax', index: 'ebx', scale: 2, disp: 4 }),
    f('[r8d]', { base: 'r8d' }),
    f('[esp]', { base: 'esp' }),
    f('[r13d+0x1]', { base: 'r13d', disp: 1 }),
  ];
}

function generate(bits: Bits): Case[] {
  const out: Case[] = [];
  const seen = new Set<string>();
  const add = (gas: string, build: Build, O1 = false): void => {
    const key = `${O1}|${gas}`;
    if (seen.has(key)) return;
    seen.add(key);
    out.push({ bits, gas, build, O1, name: `${gas.split('\n').join(' ; ')}${O1 ? '  [as -O1]' : ''}` });
  };
  const is64 = bits === 64;
  const regs: Record<MemSize, readonly Reg[]> = {
    8: is64 ? [...REG8, ...REG8_HIGH] : [...REG8.slice(0, 4), ...REG8_HIGH],
    16: is64 ? REG16 : REG16.slice(0, 8),
    32: is64 ? REG32 : REG32.slice(0, 8),
    64: is64 ? REG64 : [],
  };
  const sizes: MemSize[] = is64 ? [8, 16, 32, 64] : [8, 16, 32];
  // An accumulator and a few others per size (accumulators have short forms; r8+ need REX).
  const some: Record<MemSize, Reg[]> = {
    8: is64 ? ['al', 'dh', 'sil', 'r9b'] : ['al', 'dh', 'bl'],
    16: is64 ? ['ax', 'si', 'r12w'] : ['ax', 'si'],
    32: is64 ? ['eax', 'edi', 'r13d'] : ['eax', 'edi'],
    64: ['rax', 'rbp', 'r9', 'r15'],
  };

  // mov reg, imm: every register, then boundary values
  for (const size of sizes) {
    for (const r of regs[size]) add(`mov ${r}, 0x2a`, (a) => a.mov(r, 0x2a), size === 64);
    for (const r of some[size]) for (const v of MOV_IMM[size]) add(`mov ${r}, ${hex(v)}`, (a) => a.mov(r, v), size === 64);
  }
  // mov reg, reg: every register as destination and as source
  for (const size of sizes) {
    const rs = regs[size];
    for (const r of rs) {
      add(`mov ${r}, ${rs[1]}`, (a) => a.mov(r, rs[1]!));
      add(`mov ${rs[2]}, ${r}`, (a) => a.mov(rs[2]!, r));
    }
  }
  // ALU: reg,imm at the boundaries; reg,reg; every register with imm8/imm32
  for (const op of ALU_OPS) {
    for (const size of sizes) {
      const rs = regs[size];
      for (const r of some[size]) for (const v of ALU_IMM[size]) add(`${op} ${r}, ${hex(v)}`, (a) => a[op](r, v));
      add(`${op} ${rs[0]}, ${rs.at(-1)}`, (a) => a[op](rs[0]!, rs.at(-1)!));
      add(`${op} ${rs.at(-1)}, ${rs[3]}`, (a) => a[op](rs.at(-1)!, rs[3]!));
    }
  }
  for (const size of sizes) {
    for (const r of regs[size]) {
      add(`add ${r}, 0x1`, (a) => a.add(r, 1));
      add(`cmp ${r}, ${size === 8 ? '0x90' : '0x1000'}`, (a) => a.cmp(r, size === 8 ? 0x90 : 0x1000));
      add(`xor ${r}, ${r}`, (a) => a.xor(r, r));
      add(`inc ${r}`, (a) => a.inc(r));
      add(`dec ${r}`, (a) => a.dec(r));
    }
  }

  // memory operands: every address form with loads, stores, immediates, ALU, inc/dec, lgdt/lidt
  const forms = addressForms(bits);
  forms.forEach(([A, addr], i) => {
    const M = (size: MemSize) => mem(size, addr);
    const P = (size: MemSize) => `${PTR[size]} ${A}`;
    add(`mov ecx, ${P(32)}`, (a) => a.mov('ecx', M(32)));
    add(`mov ${P(32)}, edx`, (a) => a.mov(M(32), 'edx'));
    add(`mov eax, ${P(32)}`, (a) => a.mov('eax', M(32)));
    add(`mov ${P(32)}, eax`, (a) => a.mov(M(32), 'eax'));
    add(`mov al, ${P(8)}`, (a) => a.mov('al', M(8)));
    add(`mov ${P(16)}, ax`, (a) => a.mov(M(16), 'ax'));
    add(`mov si, ${P(16)}`, (a) => a.mov('si', M(16)));
    add(`mov ${P(8)}, 0x7f`, (a) => a.mov(M(8), 0x7f));
    add(`mov ${P(16)}, 0x1234`, (a) => a.mov(M(16), 0x1234));
    add(`mov ${P(32)}, 0x12345678`, (a) => a.mov(M(32), 0x12345678));
    add(`add ${P(32)}, 0x1`, (a) => a.add(M(32), 1));
    add(`cmp ${P(8)}, 0x80`, (a) => a.cmp(M(8), 0x80));
    add(`and ${P(32)}, 0xffff0000`, (a) => a.and(M(32), 0xffff0000));
    add(`or ${P(16)}, 0x100`, (a) => a.or(M(16), 0x100));
    add(`sub ebx, ${P(32)}`, (a) => a.sub('ebx', M(32)));
    add(`xor ${P(32)}, esi`, (a) => a.xor(M(32), 'esi'));
    add(`cmp cl, ${P(8)}`, (a) => a.cmp('cl', M(8)));
    add(`inc ${P(16)}`, (a) => a.inc(M(16)));
    add(`dec ${P(32)}`, (a) => a.dec(M(32)));
    add(`inc ${P(8)}`, (a) => a.inc(M(8)));
    add(`lgdt ${A}`, (a) => a.lgdt(M(16)));
    add(`lidt ${A}`, (a) => a.lidt(M(64)));
    if (is64) {
      add(`mov r9, ${P(64)}`, (a) => a.mov('r9', M(64)));
      add(`mov ${P(64)}, r15`, (a) => a.mov(M(64), 'r15'));
      add(`mov rax, ${P(64)}`, (a) => a.mov('rax', M(64)));
      add(`mov ${P(64)}, -0x2`, (a) => a.mov(M(64), -2));
      add(`mov ${P(64)}, 0x7fffffff`, (a) => a.mov(M(64), 0x7fffffff));
      add(`mov r10b, ${P(8)}`, (a) => a.mov('r10b', M(8)));
      add(`mov ${P(8)}, dil`, (a) => a.mov(M(8), 'dil'));
      add(`add ${P(64)}, 0x80`, (a) => a.add(M(64), 0x80));
      add(`dec ${P(64)}`, (a) => a.dec(M(64)));
    } else {
      add(`mov bh, ${P(8)}`, (a) => a.mov('bh', M(8)));
    }
    if (i < 4) {
      // every ALU operation in every direction, for a few forms
      for (const op of ALU_OPS) {
        add(`${op} edx, ${P(32)}`, (a) => a[op]('edx', M(32)));
        add(`${op} ${P(32)}, edi`, (a) => a[op](M(32), 'edi'));
        add(`${op} ${P(8)}, ah`, (a) => a[op](M(8), 'ah'));
        add(`${op} ${P(32)}, 0x7f`, (a) => a[op](M(32), 0x7f));
        add(`${op} ${P(16)}, -0x81`, (a) => a[op](M(16), -0x81));
      }
    }
  });

  // absolute label addresses and (64-bit) RIP-relative operands; `t` is defined after the instruction
  const t = (gas: string, build: Build): void =>
    add(`${gas}\nt:`, (a) => {
      build(a);
      a.label('t');
    });
  t('mov eax, DWORD PTR [t]', (a) => a.mov('eax', mem(32, { label: 't' })));
  t('mov ecx, DWORD PTR [t+0x4]', (a) => a.mov('ecx', mem(32, { label: 't', disp: 4 })));
  t('mov DWORD PTR [t], 0x1', (a) => a.mov(mem(32, { label: 't' }), 1));
  t('lgdt [t]', (a) => a.lgdt(mem(16, { label: 't' })));
  if (bits === 16) t('data32 lgdt [t]', (a) => a.lgdt(mem(16, { label: 't' }), 32));
  if (bits === 16) add('data32 lidt [bx]', (a) => a.lidt(mem(16, 'bx'), 32));
  if (bits === 32) add('data16 lgdt [eax]', (a) => a.lgdt(mem(16, 'eax'), 16));
  t('mov WORD PTR [t], ax', (a) => a.mov(mem(16, { label: 't' }), 'ax'));
  if (bits === 16) {
    t('mov ax, WORD PTR [bx+t]', (a) => a.mov('ax', mem(16, { base: 'bx', label: 't' })));
    t('mov cx, WORD PTR [bp+di+t+0x2]', (a) => a.mov('cx', mem(16, { base: 'bp', index: 'di', label: 't', disp: 2 })));
  } else {
    const [b, x] = is64 ? (['rbx', 'rcx'] as const) : (['ebx', 'ecx'] as const);
    t(`mov eax, DWORD PTR [${b}+t]`, (a) => a.mov('eax', mem(32, { base: b, label: 't' })));
    t(`mov edx, DWORD PTR [${x}*4+t]`, (a) => a.mov('edx', mem(32, { index: x, scale: 4, label: 't' })));
  }
  if (is64) {
    t('mov eax, DWORD PTR [rip+t]', (a) => a.mov('eax', mem(32, { rip: 't' })));
    t('mov DWORD PTR [rip+t+0x4], 0x12345678', (a) => a.mov(mem(32, { rip: 't', disp: 4 }), 0x12345678));
    t('mov BYTE PTR [rip+t-0x1], 0x1', (a) => a.mov(mem(8, { rip: 't', disp: -1 }), 1));
    t('inc QWORD PTR [rip+t]', (a) => a.inc(mem(64, { rip: 't' })));
    t('lidt [rip+t]', (a) => a.lidt(mem(64, { rip: 't' })));
    add('t:\nadd r12, QWORD PTR [rip+t]', (a) => a.label('t').add('r12', mem(64, { rip: 't' })));
  }
  // label addresses as immediates
  if (bits === 16) {
    t('mov ax, OFFSET t', (a) => a.mov('ax', offset('t')));
    t('mov si, OFFSET t+0x10', (a) => a.mov('si', offset('t', 0x10)));
  } else {
    t('mov eax, OFFSET t', (a) => a.mov('eax', offset('t')));
    t('mov edi, OFFSET t-0x4', (a) => a.mov('edi', offset('t', -4)));
    t('mov DWORD PTR [eax], OFFSET t', (a) => a.mov(mem(32, 'eax'), offset('t')));
  }
  if (is64) {
    t('movabs rax, OFFSET t', (a) => a.mov('rax', offset('t')));
    t('movabs r11, OFFSET t+0x10', (a) => a.mov('r11', offset('t', 0x10)));
    t('mov QWORD PTR [rax], OFFSET t', (a) => a.mov(mem(64, 'rax'), offset('t')));
  }

  // push/pop: every register the mode allows, immediates at the boundaries
  const stackRegs = is64 ? [...REG64, ...REG16] : [...regs[16], ...regs[32]];
  for (const r of stackRegs) {
    add(`push ${r}`, (a) => a.push(r));
    add(`pop ${r}`, (a) => a.pop(r));
  }
  const pushImm: (number | bigint)[] = [
    0,
    0x7f,
    0x80,
    -0x80,
    -0x81,
    0x7fff,
    -1,
    ...(bits === 16 ? [0x8000, 0xffff] : bits === 32 ? [0x7fffffff, 0x80000000, 0xffffffff] : [0x7fffffff, -0x80000000, 0xffffffffffffffffn]),
  ];
  for (const v of pushImm) add(`push ${hex(v)}`, (a) => a.push(v));

  // branches: rel8 at the edge of its range, one byte past it, backwards and forwards
  for (const j of JUMPS) {
    for (const n of [0, 127, 128]) add(`${j} t\n.fill ${n}, 1, 0\nt:`, (a) => a[j]('t').db(new Uint8Array(n)).label('t'));
    for (const n of [126, 127]) add(`t:\n.fill ${n}, 1, 0\n${j} t`, (a) => a.label('t').db(new Uint8Array(n))[j]('t'));
  }
  add('t:\njmp t', (a) => a.label('t').jmp('t'));
  add('call t\nt:', (a) => a.call('t').label('t'));
  add('t:\n.fill 200, 1, 0\ncall t', (a) => a.label('t').db(new Uint8Array(200)).call('t'));
  // growing the second jump pushes the first out of rel8 range: sizes must be iterated
  add('jmp u\njmp t\n.fill 124, 1, 0\nu:\n.fill 4, 1, 0\nt:', (a) => a.jmp('u').jmp('t').db(new Uint8Array(124)).label('u').db(new Uint8Array(4)).label('t'));
  const far = bits === 16 ? 30000 : 40000;
  add(`jmp t\nje t\n.fill ${far}, 1, 0\nt:\ncall t`, (a) => a.jmp('t').je('t').db(new Uint8Array(far)).label('t').call('t'));

  // port I/O
  for (const [r, port] of [
    ['al', 0],
    ['ax', 0xff],
    ['eax', 0x80],
  ] as const) {
    add(`out ${hex(port)}, ${r}`, (a) => a.out(port, r));
    add(`out dx, ${r}`, (a) => a.out('dx', r));
    add(`in ${r}, ${hex(port)}`, (a) => a.in(r, port));
    add(`in ${r}, dx`, (a) => a.in(r, 'dx'));
  }

  // control registers: always the mode's full-width register, no 0x66 / REX.W
  const crs = is64 ? (['cr0', 'cr2', 'cr3', 'cr4', 'cr8'] as const) : (['cr0', 'cr2', 'cr3', 'cr4'] as const);
  const crRegs = is64 ? REG64 : REG32.slice(0, 8);
  for (const cr of crs) {
    for (const r of crRegs) {
      add(`mov ${cr}, ${r}`, (a) => a.mov(cr, r));
      add(`mov ${r}, ${cr}`, (a) => a.mov(r, cr));
    }
  }
  // segment registers
  for (const s of ['es', 'ss', 'ds', 'fs', 'gs'] as const) {
    add(`mov ${s}, ax`, (a) => a.mov(s, 'ax'));
    add(`mov ${s}, ecx`, (a) => a.mov(s, 'ecx'));
  }
  for (const s of ['es', 'cs', 'ss', 'ds', 'fs', 'gs'] as const) {
    add(`mov dx, ${s}`, (a) => a.mov('dx', s));
    add(`mov ebx, ${s}`, (a) => a.mov('ebx', s));
  }
  if (is64) {
    add('mov ds, r8w', (a) => a.mov('ds', 'r8w'));
    add('mov r9d, ss', (a) => a.mov('r9d', 'ss'));
  }

  // far jumps for mode switches
  if (bits === 16) {
    t('ljmp 0x8, t', (a) => a.ljmp(8, 't'));
    t('data32 ljmp 0x8, t', (a) => a.ljmp(8, 't', 32));
    add('ljmp 0x0, 0x7c00', (a) => a.ljmp(0, 0x7c00));
    add('data32 ljmp 0x10, 0x100000', (a) => a.ljmp(0x10, 0x100000, 32));
  } else if (bits === 32) {
    t('ljmp 0x8, t', (a) => a.ljmp(8, 't'));
    add('data16 ljmp 0x18, 0x7c00', (a) => a.ljmp(0x18, 0x7c00, 16)); // a label here would be above 64 KiB
    add('ljmp 0xffff, 0xfffffff0', (a) => a.ljmp(0xffff, 0xfffffff0));
  }

  // no operands
  for (const s of ['nop', 'hlt', 'cli', 'sti', 'ret', 'ud2', 'cpuid', 'rdmsr', 'wrmsr', 'pause', 'vmcall', 'vmmcall'] as const) {
    add(s, (a) => a[s]());
  }

  // data and alignment
  add('.byte 0x0, 0x7f, 0x80, 0xff, -0x1', (a) => a.db([0, 0x7f, 0x80, 0xff, -1]));
  add('.word 0x0, 0xffff, -0x1, -0x8000', (a) => a.dw([0, 0xffff, -1, -0x8000]));
  add('.long 0x0, 0xffffffff, -0x1, -0x80000000', (a) => a.dd([0, 0xffffffff, -1, -0x80000000]));
  add('.quad 0x0, 0xffffffffffffffff, -0x1, 0x123456789abcdef0', (a) => a.dq([0, 0xffffffffffffffffn, -1, 0x123456789abcdef0n]));
  add('t:\n.long t\n.quad t', (a) => a.label('t').dd(['t']).dq(['t']));
  if (bits === 16) add('t:\n.word t', (a) => a.label('t').dw(['t'])); // below 64 KiB only there
  add('nop\n.balign 16, 0xcc\nhlt', (a) => a.nop().align(16, 0xcc).hlt());
  add('.balign 8, 0x0\nhlt\n.balign 4, 0xff', (a) => a.align(8, 0).hlt().align(4, 0xff));

  // whole snippets of the kind the guest builders will write
  if (bits === 16) {
    add(
      `cli
lgdt [gdtr]
mov eax, cr0
or eax, 0x1
mov cr0, eax
data32 ljmp 0x8, pm32
.code32
pm32:
mov ax, 0x10
mov ds, ax
mov es, ax
mov ss, ax
mov esp, 0x90000
mov dx, 0x3f8
mov al, 0x41
out dx, al
hlt
.balign 8, 0xcc
gdt:
.quad 0x0, 0xcf9a000000ffff, 0xcf92000000ffff
gdtr:
.word 0x17
.long gdt`,
      (a) =>
        a
          .cli()
          .lgdt(mem(16, { label: 'gdtr' }))
          .mov('eax', 'cr0')
          .or('eax', 1)
          .mov('cr0', 'eax')
          .ljmp(8, 'pm32', 32)
          .code(32)
          .label('pm32')
          .mov('ax', 0x10)
          .mov('ds', 'ax')
          .mov('es', 'ax')
          .mov('ss', 'ax')
          .mov('esp', 0x90000)
          .mov('dx', 0x3f8)
          .mov('al', 0x41)
          .out('dx', 'al')
          .hlt()
          .align(8, 0xcc)
          .label('gdt')
          .dq([0, 0xcf9a000000ffffn, 0xcf92000000ffffn])
          .label('gdtr')
          .dw([0x17])
          .dd(['gdt']),
    );
  }
  if (bits === 32) {
    add(
      `mov eax, cr4
or eax, 0x20
mov cr4, eax
mov eax, 0x1000
mov cr3, eax
mov ecx, 0xc0000080
rdmsr
or eax, 0x100
wrmsr
mov eax, cr0
or eax, 0x80000001
mov cr0, eax
ljmp 0x8, lm64
.code64
lm64:
mov rsp, 0x200000
mov rax, 0x123456789
mov QWORD PTR [rip+counter], rax
mov rcx, 0x10
loop_top:
inc QWORD PTR [rip+counter]
dec rcx
jnz loop_top
mov dx, 0x3f8
mov al, 0x41
out dx, al
vmcall
hlt
counter:
.quad 0x0`,
      (a) =>
        a
          .mov('eax', 'cr4')
          .or('eax', 0x20)
          .mov('cr4', 'eax')
          .mov('eax', 0x1000)
          .mov('cr3', 'eax')
          .mov('ecx', 0xc0000080)
          .rdmsr()
          .or('eax', 0x100)
          .wrmsr()
          .mov('eax', 'cr0')
          .or('eax', 0x80000001)
          .mov('cr0', 'eax')
          .ljmp(8, 'lm64')
          .code(64)
          .label('lm64')
          .mov('rsp', 0x200000)
          .mov('rax', 0x123456789)
          .mov(mem(64, { rip: 'counter' }), 'rax')
          .mov('rcx', 0x10)
          .label('loop_top')
          .inc(mem(64, { rip: 'counter' }))
          .dec('rcx')
          .jnz('loop_top')
          .mov('dx', 0x3f8)
          .mov('al', 0x41)
          .out('dx', 'al')
          .vmcall()
          .hlt()
          .label('counter')
          .dq([0]),
      true,
    );
  }
  if (is64) {
    add(
      `mov rdi, 0x1000
xor ecx, ecx
mov rax, 0x83
fill_loop:
mov QWORD PTR [rdi+rcx*8], rax
add rax, 0x200000
inc rcx
cmp rcx, 0x200
jb fill_loop
mov cr3, rdi
mov ecx, 0xc0000080
rdmsr
or eax, 0x100
wrmsr
hlt`,
      (a) =>
        a
          .mov('rdi', 0x1000)
          .xor('ecx', 'ecx')
          .mov('rax', 0x83)
          .label('fill_loop')
          .mov(mem(64, { base: 'rdi', index: 'rcx', scale: 8 }), 'rax')
          .add('rax', 0x200000)
          .inc('rcx')
          .cmp('rcx', 0x200)
          .jb('fill_loop')
          .mov('cr3', 'rdi')
          .mov('ecx', 0xc0000080)
          .rdmsr()
          .or('eax', 0x100)
          .wrmsr()
          .hlt(),
      true,
    );
  }
  return out;
}

// ---------------------------------------------------------------------------
// Running GNU as

const BASE: Record<Bits, bigint> = { 16: 0x1000n, 32: 0x100000n, 64: 0x200000n };
interface GasOut {
  addr: bigint;
  bytes: Uint8Array;
}

function run(cmd: string, args: string[], src?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) {
    let msg = `${cmd} ${args.join(' ')} failed:\n${r.stderr}`;
    if (src) {
      // point at the source lines GNU as complains about
      const lines = src.split('\n');
      msg += [...r.stderr.matchAll(/\.s:(\d+):/g)]
        .slice(0, 20)
        .map((m) => `\n  line ${m[1]}: ${lines[Number(m[1]) - 1]}`)
        .join('');
    }
    throw new Error(msg);
  }
  return r.stdout;
}

function labelsOf(c: Case): string[] {
  try {
    const a = new Assembler({ bits: c.bits, origin: BASE[c.bits] });
    c.build(a);
    return [...a.assemble().labels.keys()];
  } catch {
    return []; // the case's own test will report the error
  }
}

/** Assemble `cases` with GNU as in one batch; their bytes and guest addresses. */
function gasBatch(bits: Bits, cases: Case[], O1: boolean): Map<Case, GasOut> {
  const dir = mkdtempSync(join(tmpdir(), 'asm-test-'));
  try {
    let src = '.intel_syntax noprefix\n.text\n';
    cases.forEach((c, i) => {
      // labels are per case in our output but global in the batch: prefix them
      let gas = c.gas;
      for (const l of labelsOf(c)) gas = gas.replace(new RegExp(`(?<![\\w.$])${l.replace(/[.$]/g, '\\$&')}(?![\\w.$])`, 'g'), `c${i}_${l}`);
      src += `.code${bits}\n__case_${i}:\n${gas}\n`;
    });
    src += '__case_end:\n';
    const s = join(dir, 'x.s');
    writeFileSync(s, src);
    run('as', ['--64', ...(O1 ? ['-O1'] : []), '-o', join(dir, 'x.o'), s], src);
    run('ld', ['-m', 'elf_x86_64', `-Ttext=0x${BASE[bits].toString(16)}`, '-e', '0', '-o', join(dir, 'x.elf'), join(dir, 'x.o')]);
    run('objcopy', ['-O', 'binary', '-j', '.text', join(dir, 'x.elf'), join(dir, 'x.bin')]);
    const bin = readFileSync(join(dir, 'x.bin'));
    const at = new Map<string, bigint>();
    for (const m of run('nm', [join(dir, 'x.elf')]).matchAll(/^([0-9a-f]+) \w (__case_\w+)$/gm)) at.set(m[2]!, BigInt(`0x${m[1]}`));
    const result = new Map<Case, GasOut>();
    cases.forEach((c, i) => {
      const start = at.get(`__case_${i}`)!;
      const end = at.get(i + 1 < cases.length ? `__case_${i + 1}` : '__case_end')!;
      result.set(c, { addr: start, bytes: new Uint8Array(bin.subarray(Number(start - BASE[bits]), Number(end - BASE[bits]))) });
    });
    return result;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const hexBytes = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(' ');
/** The text column of each listing line (address and bytes are separated from it by 3+ spaces). */
const listingTexts = (listing: string): string[] => listing.split('\n').map((l) => l.split(/ {3,}/)[1] ?? '');

const MODES: Bits[] = [16, 32, 64];
const CASES = new Map(MODES.map((b) => [b, generate(b)]));

describe.each(MODES)('%i-bit mode, compared with GNU as', (bits) => {
  const cases = CASES.get(bits)!;
  const gas = new Map<Case, GasOut>();
  beforeAll(() => {
    if (!hasAs) return;
    for (const O1 of [false, true]) {
      const group = cases.filter((c) => c.O1 === O1);
      if (group.length) for (const [c, r] of gasBatch(bits, group, O1)) gas.set(c, r);
    }
  });

  for (const c of cases) {
    binutils.test(c.name, () => {
      const g = gas.get(c)!;
      const a = new Assembler({ bits, origin: g.addr });
      c.build(a);
      const out = a.assemble();
      expect(hexBytes(out.bytes)).toBe(hexBytes(g.bytes));
      // the listing has each instruction, spelled as the GNU as source
      const texts = listingTexts(out.listing);
      const insns = c.gas.split('\n').filter((l) => !l.startsWith('.') && !l.endsWith(':'));
      let k = 0;
      for (const line of insns) {
        k = texts.indexOf(line, k);
        expect(k, `listing line for '${line}' in\n${out.listing}`).toBeGreaterThanOrEqual(0);
      }
    });
  }
});

describe('cases compared with GNU as', () => {
  test('every mode has its full list (see generate())', () => {
    // guards against a generator change silently dropping most cases
    for (const b of MODES) expect(CASES.get(b)!.length).toBeGreaterThan(1000);
    expect(CASES.get(64)!.filter((c) => c.O1).length).toBeGreaterThan(64); // mov r64, imm for all 16 registers + boundaries
  });
});

// ---------------------------------------------------------------------------
// Without GNU as

describe('listing', () => {
  test('one line per instruction: address, bytes, Intel-syntax text', () => {
    const { listing } = new Assembler({ bits: 64, origin: 0x1000 }).mov('eax', 0x2a).assemble();
    expect(listing).toBe('0000000000001000  b8 2a 00 00 00   mov eax, 0x2a');
  });

  test('labels, mode switches, long data and padding', () => {
    const { listing } = new Assembler({ bits: 16, origin: 0x7c00 })
      .label('start')
      .jmp('next')
      .label('next')
      .code(32)
      .mov('eax', 1)
      .align(16, 0xcc)
      .db(new Uint8Array(40))
      .hlt()
      .assemble();
    expect(listing.split('\n')).toEqual([
      '0000000000007c00                            start:',
      '0000000000007c00  eb 00                     jmp next',
      '0000000000007c02                            next:',
      '0000000000007c02                            .code32',
      '0000000000007c02  b8 01 00 00 00            mov eax, 0x1',
      '0000000000007c07  cc cc cc cc cc cc ...     align 16, 0xcc',
      '0000000000007c10  00 00 00 00 00 00 ...     db 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, ... (40 bytes)',
      '0000000000007c38  f4                        hlt',
    ]);
  });

  test('mov r64, imm is listed as written, whatever form encodes it', () => {
    const out = new Assembler({ bits: 64 })
      .mov('rax', 0x2a)
      .mov('r8', -1)
      .mov('rcx', 2n ** 40n)
      .assemble();
    expect(listingTexts(out.listing)).toEqual(['mov rax, 0x2a', 'mov r8, -0x1', 'mov rcx, 0x10000000000']);
    expect(hexBytes(out.bytes)).toBe('b8 2a 00 00 00 49 c7 c0 ff ff ff ff 48 b9 00 00 00 00 00 01 00 00');
  });
});

describe('encodings checked without GNU as', () => {
  test('align with the default fill uses single-byte NOPs, aligned to the guest address', () => {
    const out = new Assembler({ bits: 32, origin: 0x1003 }).hlt().align(8).hlt().assemble();
    expect(hexBytes(out.bytes)).toBe('f4 90 90 90 90 f4');
  });

  test('labels are guest addresses; a high 64-bit origin works', () => {
    const origin = 0xffff800000001000n;
    const out = new Assembler({ bits: 64, origin }).label('a').jmp('b').nop().label('b').call('a').assemble();
    expect(out.labels).toEqual(
      new Map([
        ['a', origin],
        ['b', origin + 3n],
      ]),
    );
    expect(hexBytes(out.bytes)).toBe('eb 01 90 e8 f8 ff ff ff');
    // the bytes column is as wide as the longest instruction (call: 5 bytes)
    expect(out.listing.split('\n')[0]).toBe(`ffff800000001000  ${' '.repeat(14)}   a:`);
  });

  test('assemble() can be called again and gives the same result', () => {
    const a = new Assembler({ bits: 16 }).jmp('x').db(new Uint8Array(200)).label('x').ret();
    const first = a.assemble();
    expect(hexBytes(a.assemble().bytes)).toBe(hexBytes(first.bytes));
    expect(first.bytes.slice(0, 3)).toEqual(Uint8Array.from([0xe9, 0xc8, 0x00]));
  });

  test('32-bit near jumps wrap around 4 GiB', () => {
    const a = new Assembler({ bits: 32, origin: 0xfffffff0 }).call('t').db(new Uint8Array(0x8)).label('t').ret();
    expect(hexBytes(a.assemble().bytes.subarray(0, 5))).toBe('e8 08 00 00 00');
  });
});

describe('errors name the instruction and the operand', () => {
  const a16 = () => new Assembler({ bits: 16 });
  const a32 = () => new Assembler({ bits: 32 });
  const a64 = () => new Assembler({ bits: 64 });
  const cases: [string, () => unknown, RegExp][] = [
    ['immediate too wide for a byte', () => a32().mov('al', 0x100), /^mov al, 0x100: immediate 0x100 does not fit in 8 bits$/],
    ['immediate too wide for a word', () => a16().add('ax', 0x10000), /^add ax, 0x10000: immediate 0x10000 does not fit in 16 bits$/],
    ['immediate too wide for 64 bits', () => a64().mov('rax', 2n ** 64n), /immediate 0x10000000000000000 does not fit in 64 bits/],
    [
      '64-bit ALU immediate beyond imm32',
      () => a64().add('rax', 0x80000000),
      /^add rax, 0x80000000: immediate 0x80000000 does not fit in a sign-extended 32-bit immediate$/,
    ],
    ['64-bit mov to memory beyond imm32', () => a64().mov(mem(64, 'rax'), 0xffffffff), /^mov QWORD PTR \[rax\], 0xffffffff: .*sign-extended 32-bit/],
    ['push beyond imm32 in 64-bit mode', () => a64().push(0x80000000), /^push 0x80000000: /],
    ['port beyond 8 bits', () => a32().out(0x100, 'al'), /^out 0x100, al: port 0x100 does not fit in 8 bits \(use dx\)$/],
    ['in/out data register', () => a32().in('bl' as 'al', 'dx'), /^in bl, dx: bl: the data register must be al, ax or eax$/],
    ['mixed register sizes', () => a32().mov('eax', 'bx'), /^mov eax, bx: operand size mismatch \(eax is 32-bit, bx is 16-bit\)$/],
    [
      'register and memory sizes',
      () => a64().add('rax', mem(32, 'rbx')),
      /^add rax, DWORD PTR \[rbx\]: operand size mismatch \(rax is 64-bit, the memory operand is 32-bit\)$/,
    ],
    ['memory to memory', () => a32().mov(mem(32, 'eax'), mem(32, 'ebx') as never), /memory-to-memory/],
    ['r8 outside 64-bit mode', () => a32().mov('r8d', 1), /^mov r8d, 0x1: r8d exists only in 64-bit mode$/],
    ['64-bit register outside 64-bit mode', () => a16().push('rax'), /^push rax: rax exists only in 64-bit mode$/],
    ['64-bit address outside 64-bit mode', () => a32().mov('eax', mem(32, 'rbx')), /^mov eax, DWORD PTR \[rbx\]: .*rbx exists only in 64-bit mode$/],
    ['ah with a REX prefix', () => a64().mov('ah', 'sil'), /^mov ah, sil: ah cannot be encoded in an instruction that needs a REX prefix$/],
    ['32-bit push in 64-bit mode', () => a64().push('eax'), /^push eax: eax: 32-bit push\/pop does not exist in 64-bit mode$/],
    [
      'RIP-relative outside 64-bit mode',
      () => a32().mov('eax', mem(32, { rip: 'x' })),
      /^mov eax, DWORD PTR \[rip\+x\]: .*RIP-relative addressing exists only in 64-bit mode$/,
    ],
    [
      '64-bit absolute address beyond disp32',
      () => a64().mov('eax', mem(32, undefined, 0x80000000)),
      /^mov eax, DWORD PTR \[0x80000000\]: displacement 0x80000000 does not fit in a signed 32-bit field$/,
    ],
    ['16-bit absolute address beyond 64 KiB', () => a16().mov('ax', mem(16, undefined, 0x10000)), /displacement 0x10000 does not fit in a 16-bit field/],
    ['16-bit addressing in 64-bit mode', () => a64().mov('eax', mem(32, 'bx')), /16-bit addressing does not exist in 64-bit mode/],
    ['not a 16-bit address', () => a16().mov('ax', mem(16, 'cx')), /^mov ax, WORD PTR \[cx\]: WORD PTR \[cx\]: not a 16-bit address/],
    ['esp as index', () => a32().mov('eax', mem(32, { base: 'eax', index: 'esp' })), /esp cannot be an index register/],
    ['mixed address sizes', () => a64().mov('eax', mem(32, { base: 'rax', index: 'ecx' })), /mixed address register sizes \(rax, ecx\)/],
    ['control register width', () => a32().mov('cr0', 'ax'), /^mov cr0, ax: ax: control registers move to and from 32-bit registers in 32-bit mode$/],
    ['cr8 outside 64-bit mode', () => a32().mov('cr8', 'eax'), /^mov cr8, eax: cr8 exists only in 64-bit mode$/],
    ['loading cs with mov', () => a16().mov('cs', 'ax'), /cs cannot be loaded with mov/],
    ['unknown condition', () => a32().jcc('constructor' as 'e', 'x'), /^jconstructor x: unknown condition 'constructor'$/],
    ['far jump in 64-bit mode', () => a64().ljmp(8, 'x'), /^ljmp 0x8, x: a direct far jump does not exist in 64-bit mode$/],
    ['selector beyond 16 bits', () => a32().ljmp(0x10000, 0), /selector 0x10000 does not fit/],
    ['unknown operand', () => a32().mov('eax', 'foo' as 'eax'), /^mov eax, foo: unsupported operand 'foo'$/],
    ['label address in a byte register', () => a32().mov('al', offset('x')), /a label address does not fit in a byte operand/],
    ['duplicate label', () => a32().label('x').nop().label('x'), /^label 'x' is already defined$/],
    ['register name as label', () => a32().label('eax'), /not a valid label name/],
    ['alignment', () => a32().align(3), /^align 3: alignment must be a power of two$/],
    ['db value', () => a32().db([256]), /^db: 256 does not fit in a byte$/],
    ['mem() size', () => mem(12 as 8), /size must be 8, 16, 32 or 64/],
    ['mem() scale', () => mem(32, { base: 'eax', index: 'ecx', scale: 3 as 2 }), /scale must be 1, 2, 4 or 8/],
    ['mem() register', () => mem(32, 'al' as 'ax'), /'al' is not a 16\/32\/64-bit address register/],
    ['mode', () => new Assembler({ bits: 8 as 16 }), /bits must be 16, 32 or 64/],
    ['origin', () => new Assembler({ bits: 32, origin: 2 ** 32 }), /outside the 32-bit address space/],
    // errors found at assemble() time
    ['unknown jump label', () => a32().jmp('nowhere').assemble(), /^jmp nowhere: unknown label 'nowhere'$/],
    ['unknown call label', () => a16().call('nowhere').assemble(), /^call nowhere: unknown label 'nowhere'$/],
    [
      'unknown RIP label',
      () =>
        a64()
          .mov('eax', mem(32, { rip: 'nowhere' }))
          .assemble(),
      /^mov eax, DWORD PTR \[rip\+nowhere\]: unknown label 'nowhere'$/,
    ],
    ['unknown data label', () => a32().dd(['nowhere']).assemble(), /^dd nowhere: unknown label 'nowhere'$/],
    [
      '16-bit jump out of range',
      () => a16().jmp('far').db(new Uint8Array(40000)).label('far').assemble(),
      /^jmp far: target 'far' is 40000 bytes away, out of range for rel16 in 16-bit mode$/,
    ],
    [
      '16-bit conditional jump out of range',
      () => a16().label('b').db(new Uint8Array(33000)).jne('b').assemble(),
      /^jne b: target 'b' is -33004 bytes away, out of range for rel16/,
    ],
    [
      '16-bit far jump offset beyond 64 KiB',
      () => new Assembler({ bits: 16, origin: 0xfff0 }).ljmp(8, 'x').db(new Uint8Array(16)).label('x').assemble(),
      /^ljmp 0x8, x: offset 0x10005 does not fit in an unsigned 16-bit field$/,
    ],
    [
      'absolute label address beyond disp32 in 64-bit mode',
      () =>
        new Assembler({ bits: 64, origin: 0x100000000n })
          .mov('eax', mem(32, { label: 'x' }))
          .label('x')
          .assemble(),
      /^mov eax, DWORD PTR \[x\]: address 0x100000007 does not fit in a signed 32-bit field$/,
    ],
  ];
  test.each(cases)('%s', (_name, fn, message) => {
    let caught: unknown;
    try {
      fn();
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(AsmError);
    expect((caught as Error).message).toMatch(message);
  });
});
