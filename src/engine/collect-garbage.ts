/**
 * A full garbage collection on demand. Building a graph leaves its largest tensors (a checkpoint table read,
 * widened to float32, transposed or quantised) as garbage on the JS heap; nothing in the next step (ONNX
 * Runtime loading the session, native memory V8 does not see) makes V8 collect it, so without this the
 * garbage stays resident while the session loads and the first load peaks that much higher.
 */
import v8 from 'node:v8';
import vm from 'node:vm';

let gc: (() => void) | null | undefined;

export function collectGarbage(): void {
  if (gc === undefined) {
    try {
      // The flag exposes `gc` to contexts created after it is set (this one only, not the caller's).
      v8.setFlagsFromString('--expose-gc');
      gc = vm.runInNewContext('gc') as () => void;
    } catch {
      gc = null;
    }
  }
  gc?.();
}
