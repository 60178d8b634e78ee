// A vitest reporter for the test-VM tier: lists every skipped test and, in
// the test VM (TESTVM=1), fails the run when a skip is not justified by the
// running kernel. Gated tests carry their requirements as a token in their
// name (`[req: ...]`, written by test/helpers.ts's gate()); the guard parses
// the tokens of each skipped test (its own and its describe blocks') and
// re-evaluates them against this kernel's probe (lib/cli/probe.ts, in this
// process). A skip is justified only if some term of some token is false
// here. A skipped test without a token fails too, unless its name gives one
// of the few known non-capability reasons below.
//
// It also writes the run's counts to $TESTVM_WORK/vitest-summary.json, which
// tools/testvm/matrix.ts reads back after the VM powers off.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Reporter, TestModule, Vitest } from 'vitest/node';
import { evaluate, type Facts, probeFacts, serialize, tokensIn } from './requirements.js';

// Skips in files whose owners have not converted them to gate() yet, by the
// reason their names give (not by test name): not a kernel capability.
const KNOWN_REASONS: readonly { re: RegExp; why: string }[] = [
  { re: /\(SKIPPED: already inside the test VM\b/, why: 'boots QEMU itself (test/testvm-tool.test.ts)' },
];

export interface SkipVerdict {
  name: string;
  ok: boolean;
  why: string;
}

/** Whether a skipped test's name justifies its skip under these facts. */
export function judgeSkip(name: string, facts: Facts): SkipVerdict {
  let tokens;
  try {
    tokens = tokensIn(name);
  } catch (e) {
    return { name, ok: false, why: `unreadable requirement token: ${(e as Error).message}` };
  }
  if (tokens.length === 0) {
    const known = KNOWN_REASONS.find((k) => k.re.test(name));
    return known
      ? { name, ok: true, why: `not a capability: ${known.why}` }
      : { name, ok: false, why: 'skipped without a [req: ...] token (gate it with test/helpers.ts)' };
  }
  const unmet = tokens.flat().filter((r) => !evaluate(r, facts));
  if (unmet.length > 0) return { name, ok: true, why: `unmet here: ${unmet.map(serialize).join(' ')}` };
  return { name, ok: false, why: `every requirement is met here (${tokens.flat().map(serialize).join(' ')}), yet it skipped` };
}

export interface RunSummary {
  release: string;
  passed: number;
  failed: number;
  skipped: number;
  /** Skips the guard refused (in the test VM they fail the run). */
  unjustified: string[];
  failedTests: string[];
  failedModules: string[];
}

export default class VmSkipGuard implements Reporter {
  // `vitest -t PATTERN` skips the tests it does not select: those are the
  // caller's choice, not the kernel's, and are neither counted nor judged.
  #pattern: RegExp | undefined;

  onInit(vitest: Vitest): void {
    this.#pattern = vitest.config.testNamePattern;
  }

  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    const inVm = process.env.TESTVM === '1';
    let facts: Facts | undefined;
    let release = 'unknown';
    let probeError: string | undefined;
    try {
      facts = probeFacts();
      release = facts.release;
    } catch (e) {
      facts = undefined;
      probeError = (e as Error).message;
    }
    const summary: RunSummary = { release, passed: 0, failed: 0, skipped: 0, unjustified: [], failedTests: [], failedModules: [] };
    const verdicts: SkipVerdict[] = [];
    for (const m of testModules) {
      const file = m.moduleId.replace(/^.*\/test\//, 'test/');
      if (m.state() === 'failed' && m.errors().length > 0) summary.failedModules.push(file);
      for (const t of m.children.allTests()) {
        const state = t.result().state;
        if (this.#pattern && !this.#pattern.test(t.fullName.split(' > ').join(' '))) continue;
        const name = `${file} > ${t.fullName}`;
        if (state === 'passed') summary.passed++;
        else if (state === 'failed') {
          summary.failed++;
          summary.failedTests.push(name);
        } else if (state === 'skipped') {
          summary.skipped++;
          verdicts.push(facts ? judgeSkip(name, facts) : { name, ok: false, why: `the probe failed, so no skip can be justified: ${probeError ?? ''}` });
        }
      }
    }
    summary.unjustified = verdicts.filter((v) => !v.ok).map((v) => `${v.name}: ${v.why}`);
    console.log(
      `\nvm-skip-guard (Linux ${summary.release}): ${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped, ` +
        `${summary.unjustified.length} skips not justified by this kernel`,
    );
    for (const v of verdicts) console.log(`  ${v.ok ? 'skipped' : 'NOT ALLOWED'}: ${v.name}\n      ${v.why}`);
    if (inVm && summary.unjustified.length > 0) {
      console.error('vm-skip-guard: a test skipped although this kernel offers what it needs, or without saying what it needs');
      process.exitCode = 1;
    }
    const work = process.env.TESTVM_WORK;
    if (inVm && work) writeFileSync(join(work, 'vitest-summary.json'), `${JSON.stringify(summary, null, 2)}\n`);
  }
}
