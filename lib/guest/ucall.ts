// Guest-to-host messages over one I/O port, like the KVM selftests' ucall:
// the guest puts the command in EAX, its argument in ESI/RSI (and a second
// one in ECX/RCX) and executes `out dx, eax` with DX = UCALL_PORT. The host
// sees an IO exit on that port and reads the arguments from the registers.
import { AsmError, mem, type Assembler, type Cond, type Reg } from '../x86/asm.js';
import { regBySize, regInfo } from '../x86/asm-operands.js';

export const UCALL_PORT = 0x1000;

/**
 * The ucall commands. SYNC, PRINT, ASSERT and DONE take one argument (RSI);
 * ASSERT_CMP carries the two compared values and the assert's site (RSI,
 * RCX, RDI); PRINTF the format's number and up to four values (RSI, then
 * RCX, RDI, R8, R9); UNHANDLED the vector, error code, rip and CR2 of an
 * exception no handler took (sent by the IDT stubs of 64-bit guests).
 */
export const Ucall = { SYNC: 1, ASSERT: 2, DONE: 3, PRINT: 4, ASSERT_CMP: 5, PRINTF: 6, UNHANDLED: 7 } as const;
export type UcallName = keyof typeof Ucall;

/** Argument registers of a ucall, in order (64-bit code; 16/32-bit code has the first three, 32 bits wide). */
export const UCALL_ARG_REGS = ['rsi', 'rcx', 'rdi', 'r8', 'r9'] as const;
const ARGS32 = ['esi', 'ecx', 'edi'] as const;

type Arg = number | bigint | Reg;

/**
 * Emits one ucall. `arg`/`arg2` (and further arguments, up to five in
 * 64-bit code, three in 16/32-bit code) are immediates or registers. The
 * registers it uses are saved and restored, so guest code can print a value
 * and go on computing with it.
 */
export function emitUcall(a: Assembler, cmd: number, arg: Arg = 0, arg2: Arg = 0, ...more: Arg[]): Assembler {
  const args = [arg, arg2, ...more];
  const argRegs: readonly Reg[] = a.bits === 64 ? UCALL_ARG_REGS : ARGS32;
  if (args.length > argRegs.length) throw new AsmError(`a ucall takes at most ${argRegs.length} arguments in ${a.bits}-bit code, got ${args.length}`);
  const used = argRegs.slice(0, args.length);
  // ESI/ECX carry the arguments in 16- and 32-bit code, so the 32-bit
  // registers are the ones saved there (saving AX..SI in real mode lost the
  // upper halves, and popping ESI after pushing 16-bit words misaligned the stack).
  const saved: Reg[] = a.bits === 64 ? ['rax', 'rdx', ...used] : ['eax', 'edx', ...used];
  for (const s of saved) a.push(s);
  if (a.bits === 64) {
    // Every argument is read before any register is written, via the stack.
    for (const v of args) pushValue64(a, v, 'ucall argument');
    for (const r of [...used].reverse()) a.pop(r);
  } else {
    loadArgs32(
      a,
      args.map((v, i) => [used[i]!, v]),
    );
  }
  a.mov('eax', cmd);
  a.mov('dx', UCALL_PORT);
  a.out('dx', 'eax');
  for (const s of saved.reverse()) a.pop(s);
  return a;
}

/**
 * Pushes a 64-bit register or any 64-bit immediate without touching a
 * register: an immediate outside the sign-extended 32-bit range is written
 * into the new stack slot as two dwords.
 */
export function pushValue64(a: Assembler, v: Arg, what: string): void {
  checkValue64(v, what);
  if (typeof v === 'string') {
    a.push(v);
    return;
  }
  const x = BigInt.asUintN(64, BigInt(v));
  const signed = BigInt.asIntN(64, x);
  if (signed >= -(1n << 31n) && signed < 1n << 31n) {
    a.push(signed);
    return;
  }
  a.sub('rsp', 8);
  a.mov(mem(32, 'rsp', 0), Number(x & 0xffffffffn));
  a.mov(mem(32, 'rsp', 4), Number(x >> 32n));
}

// A 64-bit register or an integer immediate (any 64-bit pattern).
function checkValue64(v: Arg, what: string): void {
  // push/pop of a 16-bit register would misalign the 64-bit stack.
  if (typeof v === 'string' && regInfo(v)?.size !== 64) throw new AsmError(`${what} ${v}: use a 64-bit register in 64-bit code`);
  if (typeof v === 'number' && !Number.isSafeInteger(v)) throw new AsmError(`${what} ${v}: not a safe integer (use a bigint)`);
  if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'bigint') throw new AsmError(`${what}: a register name or an integer, got ${typeof v}`);
  if (typeof v !== 'string' && (BigInt(v) < -(1n << 63n) || BigInt(v) >= 1n << 64n)) throw new AsmError(`${what} ${v}: outside 64 bits`);
}

// 16/32-bit code: register arguments go through the stack as 32-bit words
// (all read before any argument register is written, a 16-bit one is then
// zero-extended); immediates are moved in afterwards, since a push of an
// immediate is only 16 bits wide in 16-bit code.
function loadArgs32(a: Assembler, args: [Reg, number | bigint | Reg][]): void {
  const fromRegs = args.filter((x): x is [Reg, Reg] => typeof x[1] === 'string');
  for (const [, src] of fromRegs) {
    const info = regInfo(src);
    if (info === undefined || info.size === 8 || info.size === 64)
      throw new AsmError(`ucall argument ${String(src)}: use a 16- or 32-bit register in ${a.bits}-bit code`);
    a.push(regBySize(32, info.num).name);
  }
  for (const [dst] of [...fromRegs].reverse()) a.pop(dst);
  for (const [dst, src] of fromRegs) if (regInfo(src)?.size === 16) a.and(dst, 0xffff);
  for (const [dst, v] of args) if (typeof v !== 'string') a.mov(dst, v);
}

/** Unsigned comparisons of GuestIo.assertCmp, as the selftests' GUEST_ASSERT_EQ/NE/LT/LE/GT/GE. */
export type CmpOp = '==' | '!=' | '<' | '<=' | '>' | '>=';
const CMP_COND: Record<CmpOp, Cond> = { '==': 'e', '!=': 'ne', '<': 'b', '<=': 'be', '>': 'a', '>=': 'ae' };

/** What the host knows of one assert site of the program (by its number). */
export interface AssertSite {
  message: string | undefined;
  /** For assertCmp: the operator and how the operands were written. */
  cmp?: { op: CmpOp; actual: string; expected: string };
}

/** Guest-side helpers bound to one assembler. */
export class GuestIo {
  #n = 0;
  /** @internal Assert sites by number (1..), read by the host when an assert fails. */
  readonly asserts: AssertSite[] = [];
  /** @internal printf formats by number (0..). */
  readonly formats: string[] = [];
  constructor(readonly a: Assembler) {}

  /** Reports reaching step `n`; the host's onSync runs before the guest continues. */
  sync(n: number): this {
    emitUcall(this.a, Ucall.SYNC, n);
    return this;
  }

  /** Sends a value (an immediate or a register) to the host's print log. */
  print(value: number | bigint | Reg): this {
    emitUcall(this.a, Ucall.PRINT, value);
    return this;
  }

  /**
   * GUEST_PRINTF for numbers: the host formats `format` with the values
   * (registers or immediates, at most four) the guest has when it gets
   * here, into RunResult.printed (and RunUntilDoneOptions.onPrintf).
   * Conversions: %d %i %u %x %X %o %c %p and %%, with flags, width, precision
   * and the C length modifiers (none: 32 bits, h: 16, hh: 8, l/ll/z/j/t: 64).
   * 64-bit code only.
   */
  printf(format: string, ...values: (number | bigint | Reg)[]): this {
    this.#only64('printf');
    const n = checkFormat(format);
    if (n !== values.length) throw new AsmError(`printf('${format}'): the format takes ${n} value(s), got ${values.length}`);
    if (values.length > 4) throw new AsmError(`printf('${format}'): at most 4 values, got ${values.length}`);
    for (const v of values) checkValue64(v, 'printf value');
    this.formats.push(format);
    emitUcall(this.a, Ucall.PRINTF, this.formats.length - 1, ...(values.length === 0 ? [0] : values));
    return this;
  }

  /**
   * Fails the run with `code` unless condition `cond` holds for the flags of
   * the previous instruction (e.g. after \`cmp rax, 42\`, cond 'e'); the
   * host's GuestAssertError carries `message` when one is given.
   */
  assert(cond: Cond, code: number, message?: string): this {
    const ok = `__assert_ok_${this.#n++}`;
    this.a.jcc(cond, ok);
    if (message === undefined) emitUcall(this.a, Ucall.ASSERT, code);
    else {
      this.asserts.push({ message });
      emitUcall(this.a, Ucall.ASSERT, code, this.asserts.length);
    }
    this.a.label(ok);
    return this;
  }

  /**
   * GUEST_ASSERT_EQ and friends: compares `actual` with `expected`
   * (64-bit registers or immediates, unsigned) and fails the run with a
   * GuestAssertError carrying both values and `message` unless
   * `actual op expected` holds. No register or flag the guest sees changes
   * when it holds, except the flags. 64-bit code only.
   */
  assertCmp(actual: number | bigint | Reg, op: CmpOp, expected: number | bigint | Reg, message?: string): this {
    this.#only64('assertCmp');
    const cond = CMP_COND[op];
    if (cond === undefined) throw new AsmError(`assertCmp: unknown operator '${String(op)}'`);
    // Checked before anything is emitted or recorded: a refused assert leaves the program as it was.
    checkValue64(actual, 'assertCmp operand');
    checkValue64(expected, 'assertCmp operand');
    const ok = `__assert_ok_${this.#n++}`;
    this.asserts.push({ message, cmp: { op, actual: String(actual), expected: String(expected) } });
    const a = this.a;
    // Scratch registers are saved first, so either operand may be one of them.
    a.push('r11').push('r10');
    pushValue64(a, actual, 'assertCmp operand');
    pushValue64(a, expected, 'assertCmp operand');
    a.pop('r11').pop('r10');
    a.cmp('r10', 'r11');
    a.jcc(cond, ok);
    emitUcall(a, Ucall.ASSERT_CMP, 'r10', 'r11', this.asserts.length);
    a.label(ok);
    a.pop('r10').pop('r11');
    return this;
  }

  /** assertCmp(actual, '==', expected, message): GUEST_ASSERT_EQ. */
  assertEq(actual: number | bigint | Reg, expected: number | bigint | Reg, message?: string): this {
    return this.assertCmp(actual, '==', expected, message);
  }

  /** Ends the run successfully. */
  done(): this {
    emitUcall(this.a, Ucall.DONE);
    // A guest that ignores the host and continues would run into garbage.
    this.a.hlt();
    return this;
  }

  #only64(what: string): void {
    if (this.a.bits !== 64) throw new AsmError(`${what} is for 64-bit code (this assembler emits ${this.a.bits}-bit code)`);
  }
}

// ---------------------------------------------------------------------------
// printf formats (host side)

const CONV = /%([-+ #0]*)(\d*)(?:\.(\d+))?(hh|h|ll|l|z|j|t)?([diuxXocp%])|%/g;

/** Number of values `format` takes; throws AsmError on a conversion it cannot format. */
export function checkFormat(format: string): number {
  let n = 0;
  for (const m of format.matchAll(CONV)) {
    if (m[5] === undefined)
      throw new AsmError(`printf('${format}'): unsupported conversion at '${format.slice(m.index, m.index + 3)}' (numbers only: %d %i %u %x %X %o %c %p)`);
    if (m[5] !== '%') n++;
  }
  return n;
}

/** Formats the guest's values as C's printf would, for the conversions checkFormat accepts. */
export function formatGuestPrintf(format: string, values: readonly bigint[]): string {
  let i = 0;
  return format.replace(
    CONV,
    (whole, flags: string | undefined, width: string | undefined, prec: string | undefined, len: string | undefined, conv: string | undefined) => {
      if (conv === undefined) return whole;
      if (conv === '%') return '%';
      const raw = values[i++] ?? 0n;
      const bits = conv === 'p' ? 64 : len === 'hh' ? 8 : len === 'h' ? 16 : len === undefined ? 32 : 64;
      const u = BigInt.asUintN(bits, raw);
      const f = flags ?? '';
      let body: string;
      let prefix = '';
      switch (conv) {
        case 'd':
        case 'i': {
          const s = BigInt.asIntN(bits, raw);
          body = (s < 0n ? -s : s).toString();
          prefix = s < 0n ? '-' : f.includes('+') ? '+' : f.includes(' ') ? ' ' : '';
          break;
        }
        case 'u':
          body = u.toString();
          break;
        case 'x':
        case 'X':
        case 'p':
          body = u.toString(16);
          if ((f.includes('#') && u !== 0n) || conv === 'p') prefix = '0x';
          if (conv === 'X') {
            body = body.toUpperCase();
            prefix = prefix.toUpperCase();
          }
          break;
        case 'o':
          body = u.toString(8);
          if (f.includes('#') && !body.startsWith('0')) body = `0${body}`;
          break;
        default: // 'c'
          body = String.fromCharCode(Number(u & 0xffn));
      }
      if (prec !== undefined && conv !== 'c') body = body.padStart(Number(prec), '0');
      const w = Number(width || 0);
      if (f.includes('-')) return (prefix + body).padEnd(w);
      if (f.includes('0') && prec === undefined && conv !== 'c') return prefix + body.padStart(w - prefix.length, '0');
      return (prefix + body).padStart(w);
    },
  );
}
