/**
 * Runs `internvl` argument lists (JSON in argv[2]) one after another in this process and prints, as
 * JSON, each one's exit code and what it wrote to stdout and stderr. Tests spawn it once for many
 * cases, so the test runner's own stdout is never patched.
 */
import { main } from '../src/cli/main.js';

const cases = JSON.parse(process.argv[2]) as string[][];
const results: { code: number; stdout: string; stderr: string }[] = [];
const write = { stdout: process.stdout.write.bind(process.stdout), stderr: process.stderr.write };
for (const args of cases) {
  const out = { stdout: '', stderr: '' };
  process.stdout.write = ((text: string) => {
    out.stdout += text;
    return true;
  }) as typeof process.stdout.write;
  process.stderr.write = ((text: string) => {
    out.stderr += text;
    return true;
  }) as typeof process.stderr.write;
  let code: number;
  try {
    code = await main(args);
  } catch (err) {
    code = -1;
    out.stderr += `threw: ${err instanceof Error ? err.message : String(err)}`;
  } finally {
    process.stdout.write = write.stdout;
    process.stderr.write = write.stderr;
  }
  results.push({ code, ...out });
}
write.stdout(JSON.stringify(results));
