// Instruction encoding for the x86 emitter (see asm.ts): prefixes, REX,
// ModRM/SIB and the displacement/immediate fields.
//
// An encoded instruction is `head` (every byte whose value is known when the
// instruction is written: prefixes, opcode, ModRM, SIB) followed by `fields`
// (displacements and immediates). A field may depend on a label; its size is
// still fixed, so only branches (asm.ts) change size during assemble().

import { AsmError, type Bits, type Mem, type OpSize, type RegInfo, fitsSigned, fitsUnsigned, formatMem, hex, isMem, regInfo } from './asm-operands.js';

/** How a field's final value must fit: signed, unsigned, or either (then it is stored modulo 2^n). */
export type Range = 's' | 'u' | 'su';

export interface Field {
  readonly size: 1 | 2 | 4 | 8;
  /** the value, or the addend when `sym` is set */
  readonly value: bigint;
  readonly range: Range;
  /** what the field is, for error messages ("immediate", "displacement", ...) */
  readonly what: string;
  /** value = address of label + addend (- address of the next instruction when pcrel) */
  readonly sym?: { readonly label: string; readonly pcrel: boolean };
}

export interface Insn {
  /** the listing text, GNU as Intel syntax */
  readonly text: string;
  readonly head: readonly number[];
  readonly fields: readonly Field[];
}

export function err(text: string, msg: string): AsmError {
  return new AsmError(`${text}: ${msg}`);
}

export function fits(v: bigint, size: number, range: Range): boolean {
  const bits = size * 8;
  if (range === 's') return fitsSigned(v, bits);
  if (range === 'u') return fitsUnsigned(v, bits);
  return fitsSigned(v, bits) || fitsUnsigned(v, bits);
}

export function rangeError(text: string, what: string, v: bigint, size: number, range: Range): AsmError {
  const kind = range === 's' ? 'a signed ' : range === 'u' ? 'an unsigned ' : 'a ';
  return err(text, `${what} ${hex(v)} does not fit in ${kind}${size * 8}-bit field`);
}

/** A field with a known value, checked now so the error points at the call that wrote it. */
export function constField(text: string, what: string, value: bigint, size: 1 | 2 | 4 | 8, range: Range): Field {
  if (!fits(value, size, range)) throw rangeError(text, what, value, size, range);
  return { size, value, range, what };
}

export function symField(what: string, label: string, addend: bigint, size: 1 | 2 | 4 | 8, range: Range, pcrel = false): Field {
  return { size, value: addend, range, what, sym: { label, pcrel } };
}

export function insnSize(i: Insn): number {
  return i.fields.reduce((n, f) => n + f.size, i.head.length);
}

// ---------------------------------------------------------------------------
// Memory operands -> mod, r/m, SIB, displacement

interface MemEnc {
  mod: number;
  rm: number;
  sib?: number;
  disp?: Field;
  /** needs the 0x67 address-size prefix (address registers narrower/wider than the mode's default) */
  addrPrefix: boolean;
  /** REX.X and REX.B bits (index and base register numbers >= 8) */
  x: number;
  b: number;
}

/** An absolute address with no register: the `moffs` forms (A0..A3) can take it. */
export function isAbsolute(m: Mem): boolean {
  return m.base === undefined && m.index === undefined && m.rip === undefined;
}

/** The address field of a mem operand: the label's address + disp, or the plain disp. */
function dispField(text: string, m: Mem, size: 1 | 2 | 4, range: Range): Field {
  return m.label !== undefined ? symField('address', m.label, m.disp, size, range) : constField(text, 'displacement', m.disp, size, range);
}

/** The `moffs` field of A0..A3 (mov al/ax/eax <-> absolute address): address-sized. */
export function moffsField(text: string, bits: Bits, m: Mem): Field {
  return dispField(text, m, bits === 16 ? 2 : 4, 'su');
}

function encodeMem(bits: Bits, m: Mem, text: string): MemEnc {
  const where = formatMem(m);
  if (m.rip !== undefined) {
    // mod=00 r/m=101 is [rip+disp32] in 64-bit mode (and [disp32] elsewhere).
    if (bits !== 64) throw err(text, `${where}: RIP-relative addressing exists only in 64-bit mode`);
    return { mod: 0, rm: 5, disp: symField('RIP-relative displacement', m.rip, m.disp, 4, 's', true), addrPrefix: false, x: 0, b: 0 };
  }
  const base = m.base === undefined ? undefined : regInfo(m.base)!;
  const index = m.index === undefined ? undefined : regInfo(m.index)!;
  const regs = [base, index].filter((r): r is RegInfo => r !== undefined);
  // The address size follows the registers; with none it is the mode's own.
  const asize = regs[0]?.size ?? bits;
  for (const r of regs) {
    if (r.size !== asize) throw err(text, `${where}: mixed address register sizes (${regs.map((q) => q.name).join(', ')})`);
    if (r.only64 && bits !== 64) throw err(text, `${where}: ${r.name} exists only in 64-bit mode`);
  }
  if (asize === 64 && bits !== 64) throw err(text, `${where}: 64-bit addressing exists only in 64-bit mode`);
  if (asize === 16 && bits === 64) throw err(text, `${where}: 16-bit addressing does not exist in 64-bit mode`);
  const addrPrefix = asize !== bits;
  if (asize === 16) return { ...encodeMem16(text, where, m, base, index), addrPrefix, x: 0, b: 0 };

  // 32/64-bit addressing. Displacements are sign-extended to 64 bits in
  // 64-bit addressing; in 32-bit addressing they wrap, so 0xffffffff is -1.
  const range: Range = asize === 64 ? 's' : 'su';
  const x = (index?.num ?? 0) >> 3;
  const b = (base?.num ?? 0) >> 3;
  if (index !== undefined && index.num === 4) throw err(text, `${where}: ${index.name} cannot be an index register`);
  const ss = [1, 2, 4, 8].indexOf(m.scale);
  if (base === undefined) {
    if (index !== undefined) {
      // SIB base=101 with mod=00: no base register, disp32 always present.
      return { mod: 0, rm: 4, sib: (ss << 6) | ((index.num & 7) << 3) | 5, disp: dispField(text, m, 4, range), addrPrefix, x, b };
    }
    if (bits === 64) {
      // Plain mod=00 r/m=101 would be RIP-relative in 64-bit mode, so an
      // absolute [disp32] goes through a SIB byte with no base and no index (04 25).
      return { mod: 0, rm: 4, sib: 0x25, disp: dispField(text, m, 4, 's'), addrPrefix, x, b };
    }
    return { mod: 0, rm: 5, disp: dispField(text, m, 4, 'su'), addrPrefix, x, b };
  }
  // r/m=100 means "a SIB byte follows", so rsp/esp/r12 as a base need a SIB
  // (index=100: none); mod=00 with base 101 means "no base, disp32", so
  // rbp/ebp/r13 with no displacement take an explicit disp8 of 0.
  const needSib = index !== undefined || (base.num & 7) === 4;
  const rm = needSib ? 4 : base.num & 7;
  const sib = needSib ? (ss << 6) | (((index?.num ?? 4) & 7) << 3) | (base.num & 7) : undefined;
  let mod: number;
  let disp: Field | undefined;
  if (m.label !== undefined) {
    mod = 2;
    disp = dispField(text, m, 4, range);
  } else if (m.disp === 0n && (base.num & 7) !== 5) {
    mod = 0;
  } else if (fitsSigned(m.disp, 8)) {
    mod = 1;
    disp = constField(text, 'displacement', m.disp, 1, 's');
  } else {
    mod = 2;
    disp = dispField(text, m, 4, range);
  }
  return { mod, rm, ...(sib === undefined ? {} : { sib }), ...(disp === undefined ? {} : { disp }), addrPrefix, x, b };
}

/** 16-bit addressing has a fixed menu of base/index pairs instead of SIB. */
const RM16: Record<string, number> = { 'bx+si': 0, 'bx+di': 1, 'bp+si': 2, 'bp+di': 3, si: 4, di: 5, bp: 6, bx: 7 };

function encodeMem16(text: string, where: string, m: Mem, base?: RegInfo, index?: RegInfo): Omit<MemEnc, 'addrPrefix' | 'x' | 'b'> {
  if (m.scale !== 1) throw err(text, `${where}: 16-bit addressing has no scaled index`);
  const names = [base?.name, index?.name].filter((n) => n !== undefined);
  const b = names.find((n) => n === 'bx' || n === 'bp');
  const i = names.find((n) => n === 'si' || n === 'di');
  const key = [b, i].filter((n) => n !== undefined).join('+');
  if (names.length === 0) {
    // mod=00 r/m=110 is [disp16] (which is why [bp] needs a disp8 of 0)
    return { mod: 0, rm: 6, disp: dispField(text, m, 2, 'su') };
  }
  const rm = RM16[key];
  if (rm === undefined || key.split('+').length !== names.length) {
    throw err(text, `${where}: not a 16-bit address (base bx or bp, and/or index si or di)`);
  }
  if (m.label !== undefined) return { mod: 2, rm, disp: dispField(text, m, 2, 'su') };
  if (m.disp === 0n && rm !== 6) return { mod: 0, rm };
  if (fitsSigned(m.disp, 8)) return { mod: 1, rm, disp: constField(text, 'displacement', m.disp, 1, 's') };
  return { mod: 2, rm, disp: dispField(text, m, 2, 'su') };
}

// ---------------------------------------------------------------------------
// Whole instructions

export interface Spec {
  /** operand size: decides the 0x66 prefix and REX.W; omit for instructions without size variants */
  size?: OpSize;
  /** 64-bit is this instruction's default operand size in 64-bit mode (push/pop): no REX.W */
  default64?: boolean;
  /** mandatory prefix bytes (F3 of pause): after 66/67, before REX */
  mandatory?: number[];
  opcode: number[];
  /** register encoded in the low 3 bits of the last opcode byte (push r, mov r, imm) */
  plusReg?: RegInfo;
  /** ModRM.reg: a register, or a number (an opcode extension /digit, a control or segment register) */
  reg?: RegInfo | number;
  /** ModRM.r/m: a register or memory */
  rm?: RegInfo | Mem;
  imms?: Field[];
}

export function encode(bits: Bits, text: string, spec: Spec): Insn {
  const regs = [spec.plusReg, spec.reg, spec.rm].filter((r): r is RegInfo => typeof r === 'object' && !isMem(r));
  for (const r of regs) if (r.only64 && bits !== 64) throw err(text, `${r.name} exists only in 64-bit mode`);
  const memEnc = isMem(spec.rm) ? encodeMem(bits, spec.rm, text) : undefined;

  // GNU as orders prefixes 67, 66, then mandatory ones; REX must come last.
  const head: number[] = [];
  if (memEnc?.addrPrefix) head.push(0x67);
  let w = 0;
  if (spec.size === 64) {
    if (bits !== 64) throw err(text, '64-bit operands exist only in 64-bit mode');
    if (!spec.default64) w = 1;
  } else if ((spec.size === 16 && bits !== 16) || (spec.size === 32 && bits === 16)) {
    head.push(0x66); // operand size other than the mode's default (16 in 16-bit mode, 32 otherwise)
  }
  head.push(...(spec.mandatory ?? []));

  const regNum = typeof spec.reg === 'number' ? spec.reg : spec.reg?.num;
  const r = (regNum ?? 0) >> 3;
  let x = 0;
  let b = 0;
  if (memEnc) ({ x, b } = memEnc);
  else if (spec.rm !== undefined && !isMem(spec.rm)) b = spec.rm.num >> 3;
  if (spec.plusReg) b = spec.plusReg.num >> 3;
  if (w || r || x || b || regs.some((q) => q.needsRexByte)) {
    if (bits !== 64) throw err(text, 'needs a REX prefix, which exists only in 64-bit mode');
    const high = regs.find((q) => q.forbidsRex);
    if (high) throw err(text, `${high.name} cannot be encoded in an instruction that needs a REX prefix`);
    head.push(0x40 | (w << 3) | (r << 2) | (x << 1) | b);
  }

  const opcode = [...spec.opcode];
  if (spec.plusReg) opcode[opcode.length - 1]! |= spec.plusReg.num & 7;
  head.push(...opcode);

  const fields: Field[] = [];
  if (spec.rm !== undefined) {
    const reg = (regNum ?? 0) & 7;
    if (memEnc) {
      head.push((memEnc.mod << 6) | (reg << 3) | memEnc.rm);
      if (memEnc.sib !== undefined) head.push(memEnc.sib);
      if (memEnc.disp) fields.push(memEnc.disp);
    } else {
      head.push(0xc0 | (reg << 3) | ((spec.rm as RegInfo).num & 7));
    }
  }
  fields.push(...(spec.imms ?? []));
  return { text, head, fields };
}

/** Little-endian bytes of `v` modulo 2^(8*size). */
export function le(v: bigint, size: number): number[] {
  const out: number[] = [];
  let u = BigInt.asUintN(size * 8, v);
  for (let i = 0; i < size; i++) {
    out.push(Number(u & 0xffn));
    u >>= 8n;
  }
  return out;
}
