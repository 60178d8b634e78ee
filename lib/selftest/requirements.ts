// requires(): the TEST_REQUIRE of kvm-gmem/selftest. A requirement is
// written as `kvm-gmem probe --require` takes it (GUEST_MEMFD,
// vm-type:sw-protected, sw-protected:attr:private, gmem-flag:mmap, ...) and
// judged against the same report, built once per process; or given as a
// predicate with its reason. Unmet, it yields the skip reason.
import { judgeRequirement, parseRequirement, probe, type ProbeReport } from '../cli/probe.js';

/** A requirement: probe grammar, or `{ reason, met }` for anything else. */
export type Need = string | { readonly reason: string; readonly met: boolean | (() => boolean) };

let report: ProbeReport | Error | undefined;

function kernelReport(): ProbeReport | Error {
  if (report === undefined) {
    try {
      report = probe();
    } catch (e) {
      // A device that opens but is not KVM: nothing can be met.
      report = e instanceof Error ? e : new Error(String(e));
    }
  }
  return report;
}

/** Why `need` is not met here, or undefined when it is. A malformed requirement throws RequirementSyntaxError. */
export function unmet(need: Need): string | undefined {
  if (typeof need !== 'string') {
    const met = typeof need.met === 'function' ? need.met() : need.met;
    return met ? undefined : `Requirement not met: ${need.reason}`;
  }
  const req = parseRequirement(need);
  const r = kernelReport();
  if (r instanceof Error) return `Requirement not met: ${need} (/dev/kvm: ${r.message.split('\n')[0] ?? ''})`;
  const judged = judgeRequirement(r, need, req);
  return judged.met ? undefined : `Requirement not met: ${judged.requirement} (${judged.answered}; added in Linux ${judged.since})`;
}
