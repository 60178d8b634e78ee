// A small x86 code emitter for tiny KVM guests: real-mode, protected-mode
// and long-mode snippets (mode switches, port I/O, MSR writes, loops), not a
// general assembler. Each method appends one instruction; assemble() lays
// the program out, sizes the jumps and returns bytes, labels and a listing.
//
// Encodings follow GNU as (Intel syntax) byte for byte, which the tests check
// against /usr/bin/as, with one deliberate difference: `mov r64, imm` uses the
// shortest correct form (as `as -O1` does), see movImm().
//
// Operand tables and memory operands: asm-operands.ts; ModRM/SIB/REX:
// asm-encode.ts; layout, jump sizing and listing: asm-layout.ts.

import {
  AsmError,
  type Bits,
  type CtrlReg,
  type Imm,
  type LabelAddr,
  type Mem,
  type OpSize,
  type Reg,
  type RegInfo,
  type SegReg,
  CTRL_REGS,
  SEG_REGS,
  fitsSigned,
  formatMem,
  formatOperand,
  hex,
  isCtrlReg,
  isImm,
  isLabelAddr,
  isMem,
  isSegReg,
  operandValue,
  regBySize,
  regInfo,
  toBig,
} from './asm-operands.js';
import { type Field, type Spec, constField, encode, err, isAbsolute, moffsField, symField } from './asm-encode.js';
import { type AssembleResult, type BranchForm, type Item, BYTES_PER_LISTING_LINE, assembleItems } from './asm-layout.js';

export { AsmError, mem, offset, REG64, REG32, REG16, REG8, REG8_HIGH } from './asm-operands.js';
export type { AssembleResult } from './asm-layout.js';
export type { AddrReg, Bits, CtrlReg, Imm, LabelAddr, Mem, MemAddress, MemSize, Reg, Reg8, Reg16, Reg32, Reg64, Scale, SegReg } from './asm-operands.js';

export interface AssemblerOptions {
  bits: Bits;
  /** guest address of the first byte (default 0): label values, absolute and RIP-relative references, listing */
  origin?: number | bigint;
}

/** Group-1 ALU operations: the /digit of 80/81/83, and opcode base digit*8 for the other forms. */
const ALU = { add: 0, or: 1, and: 4, sub: 5, xor: 6, cmp: 7 } as const;
type AluOp = keyof typeof ALU;

/** Condition codes: 70+cc is the rel8 form, 0F 80+cc the rel16/32 form. */
const CC = {
  o: 0x0,
  no: 0x1,
  b: 0x2,
  c: 0x2,
  ae: 0x3,
  nc: 0x3,
  e: 0x4,
  z: 0x4,
  ne: 0x5,
  nz: 0x5,
  be: 0x6,
  a: 0x7,
  s: 0x8,
  ns: 0x9,
  p: 0xa,
  np: 0xb,
  l: 0xc,
  ge: 0xd,
  le: 0xe,
  g: 0xf,
} as const;
export type Cond = keyof typeof CC;

/** Instructions without operands. */
const SIMPLE = {
  nop: [0x90],
  hlt: [0xf4],
  cli: [0xfa],
  sti: [0xfb],
  ret: [0xc3],
  ud2: [0x0f, 0x0b],
  cpuid: [0x0f, 0xa2],
  rdmsr: [0x0f, 0x32],
  wrmsr: [0x0f, 0x30],
  pause: [0xf3, 0x90],
  vmcall: [0x0f, 0x01, 0xc1],
  vmmcall: [0x0f, 0x01, 0xd9],
  iretq: [0x48, 0xcf],
} as const;

/** Operand kinds after parsing a method argument. */
type Op = { t: 'reg'; r: RegInfo } | { t: 'mem'; m: Mem } | { t: 'imm'; v: bigint } | { t: 'off'; a: LabelAddr };

type GpOrMem = Reg | Mem;
type Src = Reg | Mem | Imm;

const LABEL_RE = /^[A-Za-z_.$][A-Za-z0-9_.$]*$/;

const MAX_ALIGN = 0x200000;

export class Assembler {
  readonly origin: bigint;
  private mode: Bits;
  private any64: boolean;
  private readonly items: Item[] = [];
  private readonly labelNames = new Set<string>();

  constructor(opts: AssemblerOptions) {
    this.mode = checkBits(opts.bits, 'Assembler');
    this.any64 = this.mode === 64;
    this.origin = toBig(opts.origin ?? 0, 'Assembler origin');
    const limit = opts.bits === 64 ? 64n : 32n;
    if (this.origin < 0n || this.origin >= 1n << limit) {
      throw new AsmError(`Assembler: origin ${hex(this.origin)} is outside the ${limit}-bit address space`);
    }
  }

  /** The mode instructions are currently encoded for. */
  get bits(): Bits {
    return this.mode;
  }

  /**
   * Encode what follows for another mode (GNU as `.code16/.code32/.code64`),
   * e.g. the 32-bit code that a real-mode entry point far-jumps to. Labels
   * are shared across modes.
   */
  code(bits: Bits): this {
    this.mode = checkBits(bits, 'code()');
    this.any64 ||= bits === 64;
    this.items.push({ kind: 'code', bits });
    return this;
  }

  // -------------------------------------------------------------------------
  // Labels and data

  /** Define `name` at the current position. */
  label(name: string): this {
    if (typeof name !== 'string' || !LABEL_RE.test(name) || regInfo(name) || isCtrlReg(name) || isSegReg(name) || name === 'rip') {
      throw new AsmError(`label ${JSON.stringify(name)}: not a valid label name`);
    }
    if (this.labelNames.has(name)) throw new AsmError(`label '${name}' is already defined`);
    this.labelNames.add(name);
    this.items.push({ kind: 'label', name });
    return this;
  }

  db(bytes: readonly number[] | Uint8Array): this {
    const out = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i]!;
      if (!Number.isInteger(b) || b < -128 || b > 255) throw new AsmError(`db: ${String(b)} does not fit in a byte`);
      out[i] = b & 0xff;
    }
    const shown = Array.from(out.subarray(0, BYTES_PER_LISTING_LINE), (b) => hex(b)).join(', ');
    const text = `db ${shown}${out.length > BYTES_PER_LISTING_LINE ? `, ... (${out.length} bytes)` : ''}`;
    this.items.push({ kind: 'raw', text, bytes: out });
    return this;
  }

  /** 16-bit words; a string is a label's address. */
  dw(values: readonly (Imm | string)[]): this {
    return this.data('dw', 2, values);
  }
  dd(values: readonly (Imm | string)[]): this {
    return this.data('dd', 4, values);
  }
  dq(values: readonly (Imm | string)[]): this {
    return this.data('dq', 8, values);
  }

  private data(name: string, size: 2 | 4 | 8, values: readonly (Imm | string)[]): this {
    const text = `${name} ${values.map((v) => (typeof v === 'string' ? v : hex(v))).join(', ')}`;
    const fields = values.map((v) =>
      typeof v === 'string' ? symField('label address', v, 0n, size, 'u') : constField(text, 'value', toBig(v, text), size, 'su'),
    );
    this.items.push({ kind: 'insn', insn: { text, head: [], fields } });
    return this;
  }

  /**
   * Pad with `fill` up to the next guest address that is a multiple of n (a
   * power of two, at most 2 MiB: the largest page a tiny guest maps, and a
   * bound on the padding one call can add).
   */
  align(n: number, fill = 0x90): this {
    const text = `align ${typeof n === 'number' ? n : typeof n}${fill === 0x90 ? '' : `, ${hex(fill)}`}`;
    // The power-of-two test in bigints: `n & (n - 1)` on numbers sees only
    // the low 32 bits (3 * 2^32 would pass).
    if (!Number.isSafeInteger(n) || n < 1 || (BigInt(n) & (BigInt(n) - 1n)) !== 0n) throw new AsmError(`${text}: alignment must be a power of two`);
    if (n > MAX_ALIGN) throw new AsmError(`${text}: alignment above ${hex(MAX_ALIGN)} (2 MiB) is not supported`);
    if (!Number.isInteger(fill) || fill < 0 || fill > 255) throw new AsmError(`${text}: fill must be a byte`);
    this.items.push({ kind: 'align', text, n: BigInt(n), fill });
    return this;
  }

  // -------------------------------------------------------------------------
  // Data movement

  mov(dst: Reg, src: Reg | Mem | Imm | LabelAddr | CtrlReg | SegReg): this;
  mov(dst: Mem, src: Reg | Imm | LabelAddr): this;
  mov(dst: CtrlReg | SegReg, src: Reg): this;
  mov(dst: Reg | Mem | CtrlReg | SegReg, src: Reg | Mem | Imm | LabelAddr | CtrlReg | SegReg): this {
    let text = `mov ${formatOperand(dst)}, ${formatOperand(src)}`;
    if (isCtrlReg(dst) || isCtrlReg(src)) return this.movCr(text, dst, src);
    if (isSegReg(dst) || isSegReg(src)) return this.movSeg(text, dst, src);
    const d = this.op(dst, text);
    const s = this.op(src, text);
    if (d.t === 'imm' || d.t === 'off') throw err(text, 'the destination cannot be an immediate');
    if (s.t === 'imm') return d.t === 'reg' ? this.movImm(text, d.r, s.v) : this.movMemImm(text, d.m, s.v);
    if (s.t === 'off') {
      // The label's address is not known yet, so the immediate gets its full
      // size; for a 64-bit register that is movabs (imm64).
      const size = this.sizeOf(d);
      if (size === 8) throw err(text, 'a label address does not fit in a byte operand');
      const isize = d.t === 'mem' && size === 64 ? 4 : size / 8;
      const f = symField('label address', s.a.label, s.a.addend, isize as 2 | 4 | 8, isize === 4 && size === 64 ? 's' : 'u');
      if (d.t === 'reg') {
        if (size === 64) text = text.replace(/^mov /, 'movabs ');
        return this.emit(text, { size, opcode: [0xb8], plusReg: d.r, imms: [f] });
      }
      return this.emit(text, { size, opcode: [0xc7], reg: 0, rm: d.m, imms: [f] });
    }
    if (d.t === 'mem' && s.t === 'mem') throw err(text, 'x86 has no memory-to-memory mov');
    const size = this.sameSize(text, d, s);
    const w = size === 8 ? 0 : 1;
    if (d.t === 'reg' && s.t === 'reg') {
      // GNU as uses the "r/m <- reg" direction (88/89) for reg,reg; so do we.
      return this.emit(text, { size, opcode: [0x88 | w], reg: s.r, rm: d.r });
    }
    const toMem = d.t === 'mem';
    const reg = d.t === 'reg' ? d.r : (s as { r: RegInfo }).r;
    const m = d.t === 'mem' ? d.m : (s as { m: Mem }).m;
    if (reg.num === 0 && isAbsolute(m) && this.bits !== 64) {
      // mov al/ax/eax <-> [absolute]: A0..A3 carry the address without a
      // ModRM byte, one byte shorter; GNU as picks them too. (In 64-bit mode
      // their address is 8 bytes, so the ModRM form is shorter there.)
      return this.emit(text, { size, opcode: [(toMem ? 0xa2 : 0xa0) | w], imms: [moffsField(text, this.bits, m)] });
    }
    return this.emit(text, { size, opcode: [(toMem ? 0x88 : 0x8a) | w], reg, rm: m });
  }

  /**
   * mov reg, imm. For 64-bit registers the shortest correct form is used:
   *  - imm in 0..2^32-1: `mov r32, imm32` (5 bytes): writing a 32-bit register
   *    zero-extends into the full 64-bit register, so it loads the same value;
   *  - imm in -2^31..-1: `mov r/m64, imm32` (C7 /0, 7 bytes), sign-extended;
   *  - anything else: `movabs r64, imm64` (10 bytes).
   * Plain `as` always uses C7 /0 for the first case; `as -O1` does what we do.
   */
  private movImm(text: string, r: RegInfo, v: bigint): this {
    const val = operandValue(v, r.size);
    if (val === undefined) throw err(text, `immediate ${hex(v)} does not fit in ${r.size} bits`);
    if (r.size !== 64) {
      return this.emit(text, {
        size: r.size,
        opcode: [r.size === 8 ? 0xb0 : 0xb8],
        plusReg: r,
        imms: [constField(text, 'immediate', val, (r.size / 8) as 1 | 2 | 4, 's')],
      });
    }
    const u = BigInt.asUintN(64, val);
    if (u <= 0xffffffffn) {
      return this.emit(text, { size: 32, opcode: [0xb8], plusReg: regBySize(32, r.num), imms: [constField(text, 'immediate', u, 4, 'u')] });
    }
    if (fitsSigned(val, 32)) {
      return this.emit(text, { size: 64, opcode: [0xc7], reg: 0, rm: r, imms: [constField(text, 'immediate', val, 4, 's')] });
    }
    return this.emit(text, { size: 64, opcode: [0xb8], plusReg: r, imms: [constField(text, 'immediate', val, 8, 's')] });
  }

  private movMemImm(text: string, m: Mem, v: bigint): this {
    const imm = this.immediate(text, v, m.size);
    return this.emit(text, { size: m.size, opcode: [m.size === 8 ? 0xc6 : 0xc7], reg: 0, rm: m, imms: [imm] });
  }

  /** mov cr, reg (0F 22) / mov reg, cr (0F 20): the register is always the mode's full width, no 66/REX.W. */
  private movCr(text: string, dst: unknown, src: unknown): this {
    const toCr = isCtrlReg(dst);
    const cr = (toCr ? dst : src) as CtrlReg;
    const other = toCr ? src : dst;
    if (isCtrlReg(other)) throw err(text, 'cannot move between control registers');
    const r = this.op(other, text);
    const want = this.bits === 64 ? 64 : 32;
    if (r.t !== 'reg' || r.r.size !== want)
      throw err(text, `${formatOperand(other)}: control registers move to and from ${want}-bit registers in ${this.bits}-bit mode`);
    if (cr === 'cr8' && this.bits !== 64) throw err(text, 'cr8 exists only in 64-bit mode');
    return this.emit(text, { opcode: [0x0f, toCr ? 0x22 : 0x20], reg: CTRL_REGS[cr], rm: r.r });
  }

  /** mov sreg, r16/r32 (8E) / mov r16/r32, sreg (8C). */
  private movSeg(text: string, dst: unknown, src: unknown): this {
    const toSeg = isSegReg(dst);
    const seg = (toSeg ? dst : src) as SegReg;
    const other = toSeg ? src : dst;
    if (isSegReg(other)) throw err(text, 'cannot move between segment registers');
    if (toSeg && seg === 'cs') throw err(text, 'cs cannot be loaded with mov (use ljmp)');
    const r = this.op(other, text);
    if (r.t !== 'reg' || (r.r.size !== 16 && r.r.size !== 32))
      throw err(text, `${formatOperand(other)}: segment registers move to and from 16/32-bit registers`);
    // Loading a segment register reads 16 bits whatever the operand size, so
    // GNU as emits no 0x66 for `mov ds, eax` or `mov ds, ax`; storing one to
    // a register does have a size (the upper half is zeroed for r32).
    return toSeg
      ? this.emit(text, { opcode: [0x8e], reg: SEG_REGS[seg], rm: r.r })
      : this.emit(text, { size: r.r.size, opcode: [0x8c], reg: SEG_REGS[seg], rm: r.r });
  }

  push(src: Reg | Imm): this {
    const text = `push ${formatOperand(src)}`;
    const s = this.op(src, text);
    if (s.t === 'imm') {
      // 6A ib is sign-extended to the stack width; 68 takes iw/id (id sign-extended in 64-bit mode).
      const size = this.bits;
      const val = operandValue(s.v, size);
      if (val === undefined || !fitsSigned(val, 32))
        throw err(text, `immediate ${hex(s.v)} does not fit in ${size === 64 ? 'a sign-extended 32-bit immediate' : `${size} bits`}`);
      if (fitsSigned(val, 8)) return this.emit(text, { opcode: [0x6a], imms: [constField(text, 'immediate', val, 1, 's')] });
      return this.emit(text, { opcode: [0x68], imms: [constField(text, 'immediate', val, size === 16 ? 2 : 4, 's')] });
    }
    return this.pushPop(text, 0x50, s);
  }

  pop(dst: Reg): this {
    const text = `pop ${formatOperand(dst)}`;
    return this.pushPop(text, 0x58, this.op(dst, text));
  }

  private pushPop(text: string, opcode: number, o: Op): this {
    if (o.t !== 'reg') throw err(text, 'only registers and (for push) immediates are supported');
    const size = o.r.size;
    // Stack operations are 16 or 64 bits wide in 64-bit mode, 16 or 32 otherwise.
    const ok = this.bits === 64 ? size === 64 || size === 16 : size === 16 || size === 32;
    if (!ok) throw err(text, `${o.r.name}: ${size}-bit push/pop does not exist in ${this.bits}-bit mode`);
    return this.emit(text, { size, default64: true, opcode: [opcode], plusReg: o.r });
  }

  // -------------------------------------------------------------------------
  // Arithmetic

  add(dst: GpOrMem, src: Src): this {
    return this.alu('add', dst, src);
  }
  sub(dst: GpOrMem, src: Src): this {
    return this.alu('sub', dst, src);
  }
  cmp(dst: GpOrMem, src: Src): this {
    return this.alu('cmp', dst, src);
  }
  and(dst: GpOrMem, src: Src): this {
    return this.alu('and', dst, src);
  }
  or(dst: GpOrMem, src: Src): this {
    return this.alu('or', dst, src);
  }
  xor(dst: GpOrMem, src: Src): this {
    return this.alu('xor', dst, src);
  }

  private alu(name: AluOp, dst: unknown, src: unknown): this {
    const text = `${name} ${formatOperand(dst)}, ${formatOperand(src)}`;
    const digit = ALU[name];
    const base = digit * 8;
    const d = this.op(dst, text);
    const s = this.op(src, text);
    if (d.t !== 'reg' && d.t !== 'mem') throw err(text, 'the destination must be a register or memory');
    if (s.t === 'off') throw err(text, 'label addresses are only supported by mov');
    if (s.t === 'imm') {
      const size = this.sizeOf(d);
      const rm = d.t === 'reg' ? d.r : d.m;
      const acc = d.t === 'reg' && d.r.num === 0;
      if (size === 8) {
        const imm = this.immediate(text, s.v, 8);
        return acc ? this.emit(text, { size, opcode: [base + 4], imms: [imm] }) : this.emit(text, { size, opcode: [0x80], reg: digit, rm, imms: [imm] });
      }
      const imm = this.immediate(text, s.v, size);
      if (fitsSigned(imm.value, 8)) {
        // 83 /digit ib: the immediate is sign-extended, so any operand value in -128..127 fits in one byte.
        return this.emit(text, { size, opcode: [0x83], reg: digit, rm, imms: [{ ...imm, size: 1 }] });
      }
      // The accumulator forms (05, 2D, 3D, ...) save the ModRM byte.
      return acc ? this.emit(text, { size, opcode: [base + 5], imms: [imm] }) : this.emit(text, { size, opcode: [0x81], reg: digit, rm, imms: [imm] });
    }
    if (d.t === 'mem' && s.t === 'mem') throw err(text, 'x86 has no memory-to-memory form');
    const size = this.sameSize(text, d, s);
    const w = size === 8 ? 0 : 1;
    if (s.t === 'reg') {
      // op r/m, reg (and reg,reg in GNU as's direction)
      return this.emit(text, { size, opcode: [base + w], reg: s.r, rm: d.t === 'reg' ? d.r : d.m });
    }
    return this.emit(text, { size, opcode: [base + 2 + w], reg: (d as { r: RegInfo }).r, rm: s.m });
  }

  inc(dst: GpOrMem): this {
    return this.incDec('inc', 0, dst);
  }
  dec(dst: GpOrMem): this {
    return this.incDec('dec', 1, dst);
  }

  private incDec(name: string, digit: number, dst: unknown): this {
    const text = `${name} ${formatOperand(dst)}`;
    const d = this.op(dst, text);
    if (d.t !== 'reg' && d.t !== 'mem') throw err(text, 'the operand must be a register or memory');
    const size = this.sizeOf(d);
    if (d.t === 'reg' && size !== 8 && this.bits !== 64) {
      // 40+r / 48+r: one byte outside 64-bit mode (in 64-bit mode these bytes are REX prefixes).
      return this.emit(text, { size, opcode: [0x40 + digit * 8], plusReg: d.r });
    }
    return this.emit(text, { size, opcode: [size === 8 ? 0xfe : 0xff], reg: digit, rm: d.t === 'reg' ? d.r : d.m });
  }

  // -------------------------------------------------------------------------
  // Control flow

  /** Unconditional jump; rel8 when the label is within -128..127 bytes, else rel16 (16-bit mode) / rel32. */
  jmp(label: string): this {
    return this.branch(`jmp ${label}`, { short: [0xeb], near: [0xe9] }, label);
  }
  /** Conditional jump on `cond` (je = jcc('e', ...)), sized like jmp. */
  jcc(cond: Cond, label: string): this {
    const cc = Object.hasOwn(CC, cond) ? CC[cond] : undefined;
    if (cc === undefined) throw new AsmError(`j${String(cond)} ${label}: unknown condition '${String(cond)}'`);
    return this.branch(`j${cond} ${label}`, { short: [0x70 + cc], near: [0x0f, 0x80 + cc] }, label);
  }
  je(label: string): this {
    return this.jcc('e', label);
  }
  jne(label: string): this {
    return this.jcc('ne', label);
  }
  jz(label: string): this {
    return this.jcc('z', label);
  }
  jnz(label: string): this {
    return this.jcc('nz', label);
  }
  jl(label: string): this {
    return this.jcc('l', label);
  }
  jle(label: string): this {
    return this.jcc('le', label);
  }
  jg(label: string): this {
    return this.jcc('g', label);
  }
  jge(label: string): this {
    return this.jcc('ge', label);
  }
  jb(label: string): this {
    return this.jcc('b', label);
  }
  jbe(label: string): this {
    return this.jcc('be', label);
  }
  ja(label: string): this {
    return this.jcc('a', label);
  }
  jae(label: string): this {
    return this.jcc('ae', label);
  }
  js(label: string): this {
    return this.jcc('s', label);
  }
  jns(label: string): this {
    return this.jcc('ns', label);
  }

  /** Near call (rel16 in 16-bit mode, rel32 otherwise; there is no rel8 call). */
  call(label: string): this {
    return this.branch(`call ${label}`, { near: [0xe8] }, label);
  }

  private branch(text: string, form: BranchForm, target: string): this {
    if (typeof target !== 'string' || target === '') throw err(text, 'the target must be a label name');
    this.items.push({ kind: 'branch', text, form, target, bits: this.bits });
    return this;
  }

  /**
   * Far jump to selector:offset (EA ptr16:16 / ptr16:32), for mode switches:
   * after setting CR0.PE in 16-bit code, `ljmp(0x08, 'pm32', 32)` loads a
   * 32-bit code segment and jumps to a 32-bit offset. The offset size
   * defaults to the mode's; the other one costs a 0x66 prefix (listed as
   * `data32 ljmp` / `data16 ljmp`, GNU as's spelling). Not encodable in 64-bit mode.
   */
  ljmp(selector: number, target: string | Imm, offsetBits?: 16 | 32): this {
    const osize = offsetBits ?? (this.bits === 16 ? 16 : 32);
    const pfx = sizePrefix(osize, this.bits);
    const text = `${pfx}ljmp ${formatOperand(selector)}, ${formatOperand(target)}`;
    if (this.bits === 64) throw err(text, 'a direct far jump does not exist in 64-bit mode');
    if (osize !== 16 && osize !== 32) throw err(text, 'the offset size must be 16 or 32');
    const sel = constField(text, 'selector', toBig(selector, text), 2, 'u');
    const width = (osize / 8) as 2 | 4;
    const off = typeof target === 'string' ? symField('offset', target, 0n, width, 'u') : constField(text, 'offset', toBig(target, text), width, 'u');
    return this.emit(text, { size: osize, opcode: [0xea], imms: [off, sel] });
  }

  // -------------------------------------------------------------------------
  // Port I/O, system instructions

  /** out imm8, al/ax/eax or out dx, al/ax/eax */
  out(port: number | 'dx', src: 'al' | 'ax' | 'eax'): this {
    const text = `out ${formatOperand(port)}, ${formatOperand(src)}`;
    return this.io(text, port, src, 0xe6);
  }
  /** in al/ax/eax, imm8 or in al/ax/eax, dx */
  in(dst: 'al' | 'ax' | 'eax', port: number | 'dx'): this {
    const text = `in ${formatOperand(dst)}, ${formatOperand(port)}`;
    return this.io(text, port, dst, 0xe4);
  }

  private io(text: string, port: unknown, reg: unknown, opcode: number): this {
    const r = regInfo(reg);
    if (r === undefined || r.num !== 0 || r.size === 64) throw err(text, `${formatOperand(reg)}: the data register must be al, ax or eax`);
    const w = r.size === 8 ? 0 : 1;
    if (port === 'dx') return this.emit(text, { size: r.size, opcode: [opcode + 8 + w] });
    if (!isImm(port)) throw err(text, `${formatOperand(port)}: the port must be dx or an immediate`);
    const p = toBig(port, text);
    if (p < 0n || p > 255n) throw err(text, `port ${hex(p)} does not fit in 8 bits (use dx)`);
    return this.emit(text, { size: r.size, opcode: [opcode + w], imms: [constField(text, 'port', p, 1, 'u')] });
  }

  /**
   * Load the GDT register from a pseudo-descriptor (limit16, then base); the
   * Mem's size is ignored. With a 16-bit operand size (the default in 16-bit
   * mode) the CPU keeps only 24 bits of the base, so a GDT loaded from real
   * mode must sit below 16 MiB, or pass operandBits 32 (0x66, `data32 lgdt`)
   * to load all 32 bits. In 64-bit mode the base is always 64 bits.
   */
  lgdt(m: Mem, operandBits?: 16 | 32): this {
    return this.descriptorTable('lgdt', 2, m, operandBits);
  }
  /** Load the IDT register; see lgdt. */
  lidt(m: Mem, operandBits?: 16 | 32): this {
    return this.descriptorTable('lidt', 3, m, operandBits);
  }

  private descriptorTable(name: string, digit: number, m: Mem, operandBits?: 16 | 32): this {
    const size = operandBits ?? (this.bits === 16 ? 16 : 32);
    const pfx = sizePrefix(size, this.bits);
    const text = `${pfx}${name} ${isMem(m) ? formatMem(m, false) : formatOperand(m)}`;
    if (!isMem(m)) throw err(text, 'the operand must be memory');
    if (size !== 16 && size !== 32) throw err(text, 'the operand size must be 16 or 32');
    if (this.bits === 64 && operandBits !== undefined) throw err(text, 'the operand size is fixed in 64-bit mode');
    return this.emit(text, { ...(this.bits === 64 ? {} : { size }), opcode: [0x0f, 0x01], reg: digit, rm: m });
  }

  nop(): this {
    return this.simple('nop');
  }
  hlt(): this {
    return this.simple('hlt');
  }
  cli(): this {
    return this.simple('cli');
  }
  sti(): this {
    return this.simple('sti');
  }
  ret(): this {
    return this.simple('ret');
  }
  ud2(): this {
    return this.simple('ud2');
  }
  /** Return from an interrupt or exception handler (64-bit code). */
  iretq(): this {
    if (this.bits !== 64) throw new AsmError('iretq is a 64-bit instruction');
    return this.simple('iretq');
  }
  cpuid(): this {
    return this.simple('cpuid');
  }
  rdmsr(): this {
    return this.simple('rdmsr');
  }
  wrmsr(): this {
    return this.simple('wrmsr');
  }
  pause(): this {
    return this.simple('pause');
  }
  /** Intel VMX hypercall */
  vmcall(): this {
    return this.simple('vmcall');
  }
  /** AMD SVM hypercall */
  vmmcall(): this {
    return this.simple('vmmcall');
  }

  private simple(name: keyof typeof SIMPLE): this {
    this.items.push({ kind: 'insn', insn: { text: name, head: SIMPLE[name], fields: [] } });
    return this;
  }

  // -------------------------------------------------------------------------
  // Helpers

  private emit(text: string, spec: Spec): this {
    this.items.push({ kind: 'insn', insn: encode(this.bits, text, spec) });
    return this;
  }

  private op(x: unknown, text: string): Op {
    const r = regInfo(x);
    if (r) {
      if (r.only64 && this.bits !== 64) throw err(text, `${r.name} exists only in 64-bit mode`);
      return { t: 'reg', r };
    }
    if (isMem(x)) return { t: 'mem', m: x };
    if (isImm(x)) return { t: 'imm', v: toBig(x, text) };
    if (isLabelAddr(x)) return { t: 'off', a: x };
    throw err(text, `unsupported operand '${formatOperand(x)}'`);
  }

  private sizeOf(o: Op): OpSize {
    return o.t === 'reg' ? o.r.size : o.t === 'mem' ? o.m.size : 32;
  }

  private sameSize(text: string, a: Op, b: Op): OpSize {
    const sa = this.sizeOf(a);
    const sb = this.sizeOf(b);
    if (sa !== sb) {
      const name = (o: Op): string => (o.t === 'reg' ? o.r.name : 'the memory operand');
      throw err(text, `operand size mismatch (${name(a)} is ${sa}-bit, ${name(b)} is ${sb}-bit)`);
    }
    return sa;
  }

  /** An immediate for an operand of `size` bits: imm8/16/32, and sign-extended imm32 for 64-bit operands. */
  private immediate(text: string, v: bigint, size: OpSize): Field {
    const val = operandValue(v, size);
    if (val === undefined) throw err(text, `immediate ${hex(v)} does not fit in ${size} bits`);
    if (size === 64 && !fitsSigned(val, 32)) throw err(text, `immediate ${hex(v)} does not fit in a sign-extended 32-bit immediate`);
    return constField(text, 'immediate', val, (Math.min(size, 32) / 8) as 1 | 2 | 4, 's');
  }

  /** Lay the program out (sizing the jumps), resolve labels, and encode it. */
  assemble(): AssembleResult {
    return assembleItems(this.items, this.origin, this.any64 ? 64 : 32);
  }
}

/** GNU as's spelling of a 0x66 override on instructions without a register operand to show it. */
function sizePrefix(size: number, bits: Bits): string {
  return (size === 16 || size === 32) && size !== bits && bits !== 64 ? `data${size} ` : '';
}

function checkBits(bits: unknown, where: string): Bits {
  if (bits !== 16 && bits !== 32 && bits !== 64) throw new AsmError(`${where}: bits must be 16, 32 or 64, not ${String(bits)}`);
  return bits;
}
